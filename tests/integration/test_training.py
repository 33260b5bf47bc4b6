"""Fine-tuning beyond the basics: padding-free batches, early stopping on a task
metric, paraphrase augmentation and a 2-process (gloo) distributed launch."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from toolkit.harness import run_suite
from toolkit.suites import load_suite

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def set_arms(path, arms: dict) -> None:
    cfg = yaml.safe_load(path.read_text())
    cfg["strategies"] = arms
    path.write_text(yaml.safe_dump(cfg))


def test_packed_batch_trains_on_the_same_loss_as_padded_batches(tiny_llama):
    """DataCollatorWithFlattening + SDPA: the packed row's loss and logits equal the
    padded batch's (examples do not attend to each other)."""
    import torch
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, DataCollatorWithFlattening

    from toolkit.models import load_tokenizer
    from toolkit.training.trainer import TrainItem, tokenize_item

    tok = load_tokenizer(str(tiny_llama))
    tok.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="sdpa").eval()
    model.config.use_cache = False  # as in training: the packed mask is built only without a cache
    items = [TrainItem([{"role": "user", "content": "q " * n}], "answer " * (n % 3 + 1)) for n in (3, 11, 7, 20)]
    feats = [tokenize_item(tok, t, 256) for t in items]
    packed = DataCollatorWithFlattening()(feats)
    padded = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)(feats)
    with torch.no_grad():
        assert torch.allclose(model(**packed).loss, model(**padded).loss, atol=1e-5)
        alone = model(input_ids=torch.tensor([feats[2]["input_ids"]])).logits[0]
        start = sum(len(f["input_ids"]) for f in feats[:2])
        inside = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits[0]
        assert torch.allclose(alone, inside[start:start + len(alone)], atol=1e-4)


def test_answer_only_logits_give_the_full_loss_and_gradients(tiny_llama):
    """The LM head at the answer positions only (left-padded rows, or packed rows) gives the
    same loss and LoRA gradients as full logits on right-padded rows: the work it skips is
    work the loss never looked at."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

    from toolkit.models import load_tokenizer
    from toolkit.training.trainer import AnswerLogitsOnly, TrainItem, tokenize_item

    tok = load_tokenizer(str(tiny_llama))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False,
                                             task_type="CAUSAL_LM"))
    items = [TrainItem([{"role": "user", "content": "q " * n}], "answer " * (n % 3 + 1)) for n in (3, 11, 7, 20)]
    feats = [tokenize_item(tok, t, 256) for t in items]
    tok.padding_side = "right"
    full = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)(feats)

    def loss_and_grads(batch):
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ref, ref_grads = loss_and_grads(full)
    for packed in (False, True):
        batch = AnswerLogitsOnly(tok, packed=packed)(feats)
        out, grads = loss_and_grads(batch)
        width = batch["input_ids"].shape[1]
        assert out.logits.shape[1] < (width // 4 if not packed else width // 3), out.logits.shape  # far fewer positions
        assert torch.allclose(out.loss, ref.loss, atol=1e-5), (packed, out.loss, ref.loss)
        for n, g in ref_grads.items():
            assert torch.allclose(grads[n], g, atol=1e-5, rtol=1e-4), (packed, n)


def test_padding_free_metric_early_stopping_and_augmentation(tiny_suite_path, tmp_path):
    set_arms(tiny_suite_path, {
        "finetune": {"num_train_epochs": 4, "per_device_train_batch_size": 4, "learning_rate": 5.0e-3, "r": 4,
                     "padding_free": True, "metric_for_best_model": "token_f1", "early_stopping_patience": 1,
                     "load_best_model_at_end": True},
        "finetune_paraphrased": {"type": "finetune", "num_train_epochs": 1, "per_device_train_batch_size": 4,
                                 "r": 4, "augment": {"paraphrases": 3, "seed": 1}, "max_seq_length": 24},
    })
    _, res = run_suite(load_suite(tiny_suite_path), out=tmp_path / "run")
    assert res.status == "success", {n: r.error for n, r in res.strategies.items()}
    ft = res.strategies["finetune"].info
    assert ft.padding_free is True and ft.attention == "sdpa"
    scored = [h["eval_token_f1"] for h in ft.history if "eval_token_f1" in h]
    assert len(scored) >= 2 and ft.best_eval_token_f1 == max(scored[1:])  # [0]: before training
    assert ft.initial_eval_loss is not None and ft.extra("initial_eval_token_f1") is not None
    # random tiny model: token F1 stays flat, so patience 1 stops before epoch 4
    assert ft.stopped_early and ft.epochs_run < 4

    aug = res.strategies["finetune_paraphrased"].info
    added = aug.augment.paraphrases_added  # a random model's rewrites are mostly rejected
    assert added + aug.augment.paraphrases_rejected == 36 and aug.train_examples == 12 + added
    sample = aug.augment.paraphrase_examples[0]
    assert sample.original and len(sample.paraphrases) + len(sample.rejected) <= 3
    assert res.strategies["finetune_paraphrased"].cost.setup_breakdown_s["paraphrasing"] > 0
    # truncation is counted: chat-rendered examples are longer than 24 tokens, none reach 384
    assert ft.truncated_examples == 0 and aug.truncated_examples > 0 and aug.truncated_tokens > 0
    from toolkit.reporting.report import info_summary
    assert f"{aug.truncated_examples} training examples were longer than max_seq_length (24 tokens)" in info_summary(
        res.strategies["finetune_paraphrased"])

    _, again = run_suite(load_suite(tiny_suite_path), out=tmp_path / "run2")
    aug2 = again.strategies["finetune_paraphrased"].info
    assert aug2.augment.paraphrases_cached and aug2.cached
    assert aug2.augment.paraphrase_examples == aug.augment.paraphrase_examples


def test_paraphrase_filter_keeps_rewordings_only():
    from toolkit.training.augment import _keep

    q = "When was the Alder 5 launched?"
    raw = ["When did the Alder 5 go on sale?", "When did the Alder 5 go on sale?",  # duplicate
           "The Alder 5 was launched in 2014.",  # an answer, not a question
           "When was the Alder launched?",  # lost the model number
           "Rewrite: When was the Alder 5 launched?", " when was the alder 5 launched? ",  # the original
           "In which year was the Alder 5 released?"]
    assert _keep(raw, q) == ["When did the Alder 5 go on sale?", "In which year was the Alder 5 released?"]


def test_paraphrases_join_the_training_set_with_their_answers(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from strategies.configs import AugmentConfig
    from toolkit.data import Example
    from toolkit.training import augment

    calls = []

    def fake_generate(inputs, cfg, res, arm_cfg, ref):  # stands in for the model; the filter and caching are real
        calls.append(inputs)
        return {"raw": [[f"{q[:-1]} exactly?", "no question here"] for q in inputs], "seconds": 1.5}

    monkeypatch.setattr(augment, "_generate", fake_generate)
    ref = SimpleNamespace(fingerprint="m", name="m")
    res = SimpleNamespace(ref=lambda cfg: ref)
    ex = [Example(id=f"e{i}", input=f"Where is the Fir {i} made?", target=f"Town {i}") for i in range(3)]
    out, info = augment.paraphrase(ex, AugmentConfig(paraphrases=2), res, None)
    assert [e.input for e in out[3:]] == [f"Where is the Fir {i} made exactly?" for i in range(3)]
    assert [e.target for e in out[3:]] == ["Town 0", "Town 1", "Town 2"] and out[3].id == "e0#p1"
    assert info["paraphrases_added"] == 3 and info["paraphrases_rejected"] == 3 and not info["paraphrases_cached"]
    _, again = augment.paraphrase(ex, AugmentConfig(paraphrases=2), res, None)
    assert again["paraphrases_cached"] and len(calls) == 1


def test_metric_for_best_model_must_fit_the_task(tiny_suite_path):
    from toolkit.errors import UserError

    set_arms(tiny_suite_path, {"finetune": {"metric_for_best_model": "accuracy"}})
    with pytest.raises(UserError, match="accuracy' is a classification metric") as e:
        load_suite(tiny_suite_path)
    assert e.value.line and "strategies.finetune.metric_for_best_model" in str(e.value)
    set_arms(tiny_suite_path, {"finetune": {"metric_for_best_model": "bleu"}})
    with pytest.raises(UserError, match="not one of"):
        load_suite(tiny_suite_path)


def _adapter_shapes(folder) -> dict:
    from safetensors import safe_open
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def test_two_process_launch_trains_the_same_adapter_shape(tiny_suite_path, tmp_path, isolated_cache):
    """`accelerate launch --multi_gpu` with 2 processes on a machine without GPU (gloo DDP)
    runs the unchanged CLI; process 0
    writes the run. The adapter has the single-process shape and lowers validation loss."""
    set_arms(tiny_suite_path, {"finetune": {"num_train_epochs": 3, "per_device_train_batch_size": 2,
                                       "learning_rate": 5.0e-3, "r": 4, "lora_alpha": 8}})
    env = {**os.environ, "ADAPTBENCH_CACHE": str(isolated_cache), "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    cli = ["-m", "toolkit.cli", "run", str(tiny_suite_path), "-q"]
    one = subprocess.run([sys.executable, *cli, "-o", str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, cwd=REPO, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *cli,
                          "-o", str(tmp_path / "two")], env=env, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())["strategies"]["finetune"]
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())["strategies"]["finetune"]
    assert r1["status"] == r2["status"] == "success"
    assert r1["info"]["processes"] == 1 and r2["info"]["processes"] == 2
    assert r1["info"]["adapter_key"] != r2["info"]["adapter_key"]  # twice the global batch: another adapter
    # each process saw half the examples per step: half the optimiser steps per epoch
    steps = lambda r: max(h["step"] for h in r["info"]["history"])  # noqa: E731
    assert steps(r2) == steps(r1) // 2
    a1 = _adapter_shapes(tmp_path / "one" / "adapters" / "finetune")
    a2 = _adapter_shapes(tmp_path / "two" / "adapters" / "finetune")
    assert a1 == a2 and a1
    assert r2["info"]["final_eval_loss"] < r2["info"]["initial_eval_loss"]
    assert r2["metrics"]["token_f1"]["n"] == 6  # process 0 scored the whole test split once
    samples = (tmp_path / "two" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 6  # written once, by process 0


def test_bars_inside_the_training_bar_draw_nothing_and_a_failure_closes_it(monkeypatch):
    """A task metric answers the validation split inside the training bar: rich allows one
    live display, so the inner bar must stand down, and a failed training must not leave
    the bar open for the next arm."""
    from toolkit import progress
    from toolkit.training.trainer import _rich_callback

    monkeypatch.setattr(progress, "quiet", False)
    bar = _rich_callback(4, "training")
    with bar.shown():
        assert bar.p is not None
        with progress.task_bar("validation answers", 3) as advance:
            advance(3)
        with progress.status("inner spinner"):
            pass
    with pytest.raises(RuntimeError):
        with bar.shown():
            raise RuntimeError("training failed")
    assert progress._outer[0] == 0 and bar.p is None
    with progress.task_bar("next arm", 1) as advance:  # LiveError if the failed bar were still live
        advance(1)


def test_class_weighted_loss_is_the_weighted_mean_of_each_examples_answer_tokens(tiny_llama):
    """balance: class_weight — the training loss of a batch is sum(w_i * CE of example i's answer
    tokens) / sum(w_i * its answer tokens), in padded and in packed batches; with every weight
    1 it is the model's own loss."""
    import torch
    from transformers import AutoModelForCausalLM

    from toolkit.models import load_tokenizer
    from toolkit.training.trainer import AnswerLogitsOnly, TrainItem, tokenize_item, weighted_answer_loss

    tok = load_tokenizer(str(tiny_llama))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="sdpa", dtype=torch.float32).eval()
    model.config.use_cache = False
    items = [TrainItem([{"role": "user", "content": "q " * n}], "answer " * (n % 3 + 1)) for n in (3, 11, 7, 20)]
    feats = [tokenize_item(tok, t, 256) for t in items]
    weights = [1.0, 3.0, 0.5, 2.0]
    sums, counts = [], []
    with torch.no_grad():
        for f in feats:  # each example alone: its answer tokens' summed cross-entropy and count
            ids, labels = torch.tensor([f["input_ids"]]), torch.tensor([f["labels"]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            target = labels[0, 1:]
            ce = torch.nn.functional.cross_entropy(logits[target != -100], target[target != -100], reduction="sum")
            sums.append(float(ce))
            counts.append(int((target != -100).sum()))
        expected = sum(w * s for w, s in zip(weights, sums)) / sum(w * n for w, n in zip(weights, counts))
        for packed in (False, True):
            batch = AnswerLogitsOnly(tok, packed=packed)([{**f, "weight": w} for f, w in zip(feats, weights)])
            w, labels, shift = batch.pop("token_weights"), batch.pop("labels"), batch.pop("shift_labels", None)
            out = model(**batch)
            got = weighted_answer_loss(out.logits, shift if packed else labels, w, shifted=packed)
            assert float(got) == pytest.approx(expected, rel=1e-4), packed
            plain = AnswerLogitsOnly(tok, packed=packed)(feats)
            assert "token_weights" not in plain
            ones = torch.ones_like(w)
            assert float(weighted_answer_loss(out.logits, shift if packed else labels, ones, shifted=packed)) == \
                pytest.approx(float(model(**plain).loss), rel=1e-4)


def test_balance_oversamples_undersamples_or_weights_the_training_labels(tmp_path, tiny_llama):
    from tests.conftest import write_jsonl
    from toolkit.errors import UserError

    counts = {"common": 24, "middle": 8, "rare": 3}
    train = [{"question": f"{lab} ticket {i}", "label": lab} for lab, n in counts.items() for i in range(n)]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "test.jsonl", [{"question": f"{lab} test {i}", "label": lab} for lab in counts for i in range(2)])
    arm = {"type": "finetune", "num_train_epochs": 1, "max_seq_length": 64, "per_device_train_batch_size": 8,
           "r": 4, "eval_strategy": "no"}
    suite = {"name": "imb", "task": "classification", "instruction": "Classify the ticket.",
             "data": {"train": "train.jsonl", "test": "test.jsonl"}, "generator": {"model": str(tiny_llama),
                                                                                   "max_new_tokens": 3},
             "strategies": {"plain": arm, "over": {**arm, "balance": "oversample"},
                            "under": {**arm, "balance": "undersample"}, "weighted": {**arm, "balance": "class_weight"}},
             "metrics": ["macro_f1", "accuracy"]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    run, res = run_suite(load_suite(tmp_path / "s.yaml"), out=tmp_path / "run")
    assert res.status == "success", res.strategies
    info = {n: a.info for n, a in res.strategies.items()}
    assert info["plain"].balance is None and info["plain"].train_examples == 35
    assert info["over"].balance["after"] == {"common": 24, "middle": 24, "rare": 24} and info["over"].train_examples == 72
    assert info["under"].balance["after"] == {"common": 3, "middle": 3, "rare": 3} and info["under"].train_examples == 9
    w = info["weighted"].balance["weights"]
    assert info["weighted"].train_examples == 35 and w["rare"] == pytest.approx(35 / (3 * 3), rel=1e-3)
    assert w["common"] < w["middle"] < w["rare"]
    assert len({i.adapter_key for i in info.values()}) == 4  # four different adapters
    assert any("loss" in h for h in info["weighted"].history)
    md, html = __import__("toolkit.reporting.report", fromlist=["render_run"]).render_run(run.path)
    page = html.read_text()
    assert "oversampled to 24 per label" in page and "class weights" in page
    assert 'id="per-label"' in page  # recall per label, each arm side by side

    for bad, msg in (({"task": "qa", "metrics": None}, "balance evens out the labels"),):
        q = {**suite, **bad, "strategies": {"over": {**arm, "balance": "oversample"}}}
        q = {k: v for k, v in q.items() if v is not None}
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(q))
        with pytest.raises(UserError, match=msg):
            load_suite(tmp_path / "bad.yaml")
