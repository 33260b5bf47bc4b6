#!/usr/bin/env python3
"""Knowledge bases at scale, measured side by side in one run on the same chunks:

1. index build (adaptbench's Retriever: chunking, embedding, Chroma writes) against a bare
   `SentenceTransformer.encode` of the same chunk texts — `index_vs_encode` (throughput ratio;
   on both sides the models are loaded before the clock starts);
2. retrieval latency per query (p50/p95) and batched queries/s, the query embedding excluded
   (timed separately), at each size;
3. recall@10 of Chroma's HNSW index against exact search on the same embeddings (HNSW settings
   printed; by id, and within 1e-3 of the exact 10th distance as ann-benchmarks counts it), and
   hit@10 / MRR of COVID-QA's questions against their gold papers among the rest;
4. one changed document absorbed incrementally against the full build — `update_one_doc_s`,
   `full_rebuild_s` — and the estimate the recommendation uses (`knowledge_update_s`);
5. peak RSS (after the build, and at the end, after this benchmark has read the whole index
   and searched it exactly) and the index's size on disk;
6. how close together the filler's chunks embed, against the abstracts' (mean pairwise cosine
   of 1,000 of each) — `filler_cosine`, `abstract_cosine`.

The corpus is public text read at run time from ../shared/datasets (the 98 CORD-19 papers of
COVID-QA, the 1,000 PubMedQA abstracts) plus deterministic filler documents (seeded; drawn from a
word-bigram model of the abstracts, or with --filler near-alike from 37 topic words) up to the
asked number of chunks; nothing is copied into the repository.

    python benchmarks/kb_scale.py --sizes 10000,100000

Each size builds in a fresh cache folder of its own. Ends with `name: value` lines (of the
largest size).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("ADAPTBENCH_OFFLINE", "1")  # toolkit/__init__.py: the hub libraries offline
os.environ.setdefault("ADAPTBENCH_QUIET", "1")

import numpy as np  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from toolkit.config import EmbedderConfig, HnswConfig  # noqa: E402
from toolkit.data.kb import Document, KnowledgeBase  # noqa: E402
from toolkit.data.loaders import make_filler, pubmedqa_abstracts  # noqa: E402
from toolkit.models import embed, load_embedder, load_tokenizer, resolve_generator  # noqa: E402
from toolkit.retrieval import Retriever  # noqa: E402

DATA = Path(os.environ.get("ADAPTBENCH_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
def public_docs() -> tuple[list[Document], list[tuple[str, str]]]:
    """CORD-19 papers (COVID-QA's contexts) and PubMedQA abstracts; COVID-QA questions with gold papers."""
    docs, questions, seen = [], [], set()
    qa = json.loads((DATA / "covid_qa" / "200423_covidQA.json").read_text(encoding="utf-8"))["data"]
    for article in qa:
        for para in article["paragraphs"]:
            did = f"paper-{para['document_id']}"
            if did not in seen:
                seen.add(did)
                docs.append(Document(did, para["context"]))
            questions += [(q["question"].strip(), did) for q in para["qas"] if q["question"].strip()]
    docs += pubmedqa_abstracts(DATA / "pubmedqa", DATA, "pubmedqa")
    return docs, questions


# --filler near-alike: sentences from a bag of 37 topic words, whose documents embed almost on top of
# each other (filler_cosine says how close): what a knowledge base of templated pages is like
TOPIC_WORDS = ("patient cohort protein viral load antibody receptor trial dose symptom onset clinical sample "
               "serum assay cell infection transmission vaccine outcome mortality incidence exposure lung fever "
               "cough ward hospital therapy response marker genome strain mutation host immune titer").split()


def near_alike_filler(n: int, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    return [Document(f"filler-{i:06d}", " ".join(
        " ".join(rng.choice(TOPIC_WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "." for _ in range(6)))
        for i in range(n)]


def spread(vecs: np.ndarray, owners: list[str], prefix: str, n: int = 1000) -> float | None:
    """Mean pairwise cosine of up to n chunks (a seeded sample) of the documents whose id starts with
    prefix: how close together they embed."""
    idx = [i for i, o in enumerate(owners) if o.startswith(prefix)]
    if len(idx) < 2:
        return None
    v = vecs[sorted(random.Random(0).sample(idx, min(n, len(idx))))]
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    sims = v @ v.T
    return float((sims.sum() - np.trace(sims)) / (len(v) * (len(v) - 1)))


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def du(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def ann_recall(qv, vecs, ids, res, k: int = 10, eps: float = 1e-3) -> tuple[float, float]:
    """recall@k of the HNSW results against exact search on the same (unit) embeddings: by id,
    and the way ann-benchmarks counts it (a result counts when its distance is within `eps` of the
    exact k-th distance), which does not count a tie among near-identical chunks as a miss."""
    sims = qv @ vecs.T
    exact = np.argsort(-sims, axis=1)[:, :k]
    by_id, by_dist = [], []
    for i in range(len(qv)):
        by_id.append(len(set(res["ids"][i]) & {ids[j] for j in exact[i]}) / k)
        kth = 1.0 - sims[i, exact[i][-1]]  # Chroma's cosine distance of the exact k-th chunk
        by_dist.append(sum(d <= kth + eps for d in res["distances"][i][:k]) / k)
    return float(np.mean(by_id)), float(np.mean(by_dist))


def measure(size: int, args, tok_path: str, public: list[Document], questions) -> dict:
    os.environ["ADAPTBENCH_CACHE"] = tempfile.mkdtemp(prefix=f"kb-scale-{size}-")
    n_fill = max(size - int(len(public) * args.public_chunks), 0)
    docs = public + (near_alike_filler(n_fill) if args.filler == "near-alike" else
                     make_filler(n_fill, [d.text for d in public if d.id.startswith("pmid-")]))
    emb = EmbedderConfig(model=args.embedder, batch_size=args.batch_size)
    mk = lambda kb, source="bench": Retriever(kb, emb, chunk_size=args.chunk_size, chunk_overlap=0,  # noqa: E731
                                               tokenizer_path=tok_path, tokenizer_key="smollm2", source=source,
                                               hnsw=args.hnsw)
    kb = KnowledgeBase("kb-scale", docs, source="bench")
    r = mk(kb)
    # models loaded before either side is timed (the bare encode's model is loaded outside its timing too)
    load_tokenizer(tok_path)
    embed(emb.model, ["warm up"], emb.batch_size)
    t0 = time.perf_counter()
    r.build()
    build_s = time.perf_counter() - t0
    build_rss = rss_gib()  # the process's peak so far: the build's (before this benchmark reads the whole index)
    col = r._collection
    n = col.count()
    texts, ids, owners, vecs = [], [], [], []
    for off in range(0, n, 5000):
        got = col.get(include=["documents", "embeddings", "metadatas"], limit=5000, offset=off)
        texts += got["documents"]
        ids += got["ids"]
        owners += [str((m or {}).get("doc_id")) for m in got["metadatas"]]
        vecs.append(np.asarray(got["embeddings"], dtype=np.float32))
    vecs = np.concatenate(vecs)

    # bare encode of the same texts with the same sentence-transformers model, device and batch size
    st = load_embedder(emb.model, emb.batch_size)._model
    t0 = time.perf_counter()
    st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)
    encode_s = time.perf_counter() - t0

    qs = questions[: args.queries]
    t0 = time.perf_counter()
    qv = embed(emb.model, [q for q, _ in qs], emb.batch_size)
    query_embed_s = (time.perf_counter() - t0) / len(qs)
    one = []
    for v in qv:
        t0 = time.perf_counter()
        col.query(query_embeddings=v[None, :], n_results=10, include=["metadatas", "distances"])
        one.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    res = col.query(query_embeddings=qv, n_results=10, include=["metadatas", "distances"])
    batched_qps = len(qs) / (time.perf_counter() - t0)
    recall, recall_eps = ann_recall(qv, vecs, ids, res)
    hits, rr = [], []
    for (q, gold), metas in zip(qs, res["metadatas"]):
        docs_got = [m["doc_id"] for m in metas]
        hits.append(gold in docs_got)
        rr.append(1 / (docs_got.index(gold) + 1) if gold in docs_got else 0.0)

    # one changed document, absorbed incrementally
    changed = [d if d.id != docs[-1].id else Document(d.id, d.text + " Revised: the cohort was followed for a year.")
               for d in docs]
    up = mk(KnowledgeBase("kb-scale", changed, source="bench"))
    t0 = time.perf_counter()
    up.build()
    update_s = time.perf_counter() - t0
    assert up.last is not None and up.last.changed == 1 and up.last.touched == 1, up.last
    out = {"size": n, "documents": len(docs), "build_s": build_s, "encode_s": encode_s,
           "index_vs_encode": encode_s / build_s, "query_embed_ms": query_embed_s * 1e3,
           "p50_ms": float(np.percentile(one, 50) * 1e3), "p95_ms": float(np.percentile(one, 95) * 1e3),
           "batched_qps": batched_qps, "ann_recall_at_10": recall, "ann_recall_at_10_eps": recall_eps, "hit_at_10": float(np.mean(hits)),
           "mrr": float(np.mean(rr)), "update_one_doc_s": update_s, "update_detail": up.last.as_dict(),
           "knowledge_update_estimate_s": up.one_document_update_s(),
           "filler_cosine": spread(vecs, owners, "filler-"), "abstract_cosine": spread(vecs, owners, "pmid-"),
           "disk_mib": du(r.folder), "build_peak_rss_gib": build_rss, "peak_rss_gib": rss_gib()}
    return out


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="chunk counts to build (comma-separated)")
    ap.add_argument("--chunk-size", type=int, default=128, help="generator tokens per chunk")
    ap.add_argument("--batch-size", type=int, default=64, help="texts embedded together")
    ap.add_argument("--queries", type=int, default=300, help="COVID-QA questions to time and score")
    ap.add_argument("--embedder", default="all-minilm-l6-v2",
                    help="embedding model: the bundled one, a sentence-transformers id or a local folder")
    ap.add_argument("--tokenizer", default=None,
                    help="folder of the tokenizer that sizes chunks (default: the bundled SmolLM2's)")
    for name, default in HnswConfig().settings().items():
        if name != "space":
            ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=default,
                            help=f"HNSW {name} (knowledge_base.hnsw.{name} in a suite; default {default})")
    ap.add_argument("--filler", choices=("bigram", "near-alike"), default="bigram",
                    help="bigram: drawn from a word-bigram model of the abstracts (the covid_qa_100k suite's); "
                         "near-alike: sentences of 37 topic words, documents that embed almost on top of each other")
    ap.add_argument("--public-chunks", type=float, default=8.0,
                    help="chunks a public document is counted as when sizing the filler")
    args = ap.parse_args()
    try:
        args.hnsw = HnswConfig(max_neighbors=args.max_neighbors, ef_construction=args.ef_construction,
                               ef_search=args.ef_search)
    except ValidationError as e:
        ap.error("; ".join(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}" for err in e.errors()))
    if not (DATA / "covid_qa").is_dir():
        sys.exit(f"error: {DATA}/covid_qa not found (set ADAPTBENCH_DATA_DIR to the shared datasets)")
    tok_path = args.tokenizer or resolve_generator("smollm2-135m-instruct").path
    public, questions = public_docs()
    random.Random(0).shuffle(questions)
    st = load_embedder(args.embedder, args.batch_size)._model  # the sentence-transformers model underneath
    weights = next(st.parameters())
    print(f"HNSW settings: {args.hnsw.settings()}; {args.filler} filler; chunk size {args.chunk_size} tokens; embedder {args.embedder} on "
          f"{weights.device} ({str(weights.dtype).removeprefix('torch.')}), batch {args.batch_size}; "
          f"{len(public)} public documents")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        m = measure(size, args, tok_path, public, questions)
        rows.append(m)
        print(f"{m['size']:>7} chunks / {m['documents']} docs: build {m['build_s']:.1f} s (bare encode "
              f"{m['encode_s']:.1f} s, ratio {m['index_vs_encode']:.2f}); query p50 {m['p50_ms']:.2f} ms, "
              f"p95 {m['p95_ms']:.2f} ms, batched {m['batched_qps']:.0f} q/s, query embedding "
              f"{m['query_embed_ms']:.1f} ms; recall@10 vs exact {m['ann_recall_at_10']:.3f} (within 1e-3 of "
              f"the exact 10th distance: {m['ann_recall_at_10_eps']:.3f}); hit@10 "
              f"{m['hit_at_10']:.3f}, MRR {m['mrr']:.3f}; one doc updated in {m['update_one_doc_s']:.2f} s "
              f"(estimate {m['knowledge_update_estimate_s']:.2f} s; compare {m['update_detail']['compare_s']:.2f} s); "
              f"mean pairwise cosine of filler chunks {fmt(m['filler_cosine'])}, of abstract chunks "
              f"{fmt(m['abstract_cosine'])}; disk {m['disk_mib']:.0f} MiB; peak RSS after the build {m['build_peak_rss_gib']:.2f} GiB, "
              f"at the end {m['peak_rss_gib']:.2f} GiB", flush=True)
    last = rows[-1]
    tag = f"_{round(last['size'] / 1000)}k"
    print(f"index_vs_encode: {last['index_vs_encode']:.3f}")
    for m in rows:
        t = f"_{round(m['size'] / 1000)}k"
        print(f"retrieval_p50_ms{t}: {m['p50_ms']:.3f}")
        print(f"retrieval_p95_ms{t}: {m['p95_ms']:.3f}")
        print(f"batched_qps{t}: {m['batched_qps']:.1f}")
    print(f"ann_recall_at_10: {last['ann_recall_at_10']:.4f}")
    print(f"ann_recall_at_10_eps: {last['ann_recall_at_10_eps']:.4f}")
    print(f"hit_at_10{tag}: {last['hit_at_10']:.4f}")
    print(f"update_one_doc_s: {last['update_one_doc_s']:.3f}")
    print(f"full_rebuild_s: {last['build_s']:.2f}")
    print(f"index_disk_mib{tag}: {last['disk_mib']:.1f}")
    print(f"filler_cosine: {fmt(last['filler_cosine'])}")
    print(f"abstract_cosine: {fmt(last['abstract_cosine'])}")
    print(f"build_peak_rss_gib: {last['build_peak_rss_gib']:.2f}")
    print(f"peak_rss_gib: {last['peak_rss_gib']:.2f}")


if __name__ == "__main__":
    main()
