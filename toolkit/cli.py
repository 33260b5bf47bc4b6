"""adaptbench command line. Parses arguments and delegates; no logic lives here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from toolkit import __version__
from toolkit.errors import UserError
from toolkit.training import distributed as D

EPILOG = """\
examples:
  adaptbench run demo                                       all arms of the bundled demo suite
  adaptbench run demo --strategies rag,zero_shot --limit 20
  adaptbench run my_suite.yaml                              your own suite (adaptbench suite-fields lists its fields)
  adaptbench run banking77 --data-dir ../shared/datasets    a bundled public-data suite, its data where you keep it
  adaptbench validate my_suite.yaml                         check a suite and its data, load no model
  adaptbench report reports/demo-20261121-101500 --weights quality=0.8
                                                            re-render a run's report (other decision weights)
  adaptbench compare reports/demo-A reports/demo-B --fail-on-regression token_f1
                                                            B against baseline A; exit 3 on a significant drop
  adaptbench runs                                           past runs with their headline numbers
  adaptbench export reports/demo-... --strategy finetune --merge out/model
                                                            the fine-tuned model as a plain transformers folder
  adaptbench serve reports/demo-... --arm rag=80 --arm rag_finetune=20
                                                            arms of a run behind an OpenAI-compatible API, A/B
  adaptbench logs reports/demo-.../serve.db --export feedback.jsonl
                                                            what was served; corrected answers as train data
  adaptbench ab reports/demo-.../serve.db                   the A/B test: feedback per arm with CIs, p-value
  adaptbench ls                                             strategies, loaders, bundled models, suites
  adaptbench init tickets.csv --kb docs/                    a starter suite for your data (then validate, run)
  adaptbench data check tickets.csv                         problems in your data, with their lines, before a run
  adaptbench data prepare tickets.csv data/ --format label --split 0.8/0.1/0.1 --stratify
                                                            convert, dedupe, balance and split into JSONL
  adaptbench suite-fields finetune                          every field of a section: type, default, meaning

exit codes: 0 success, 1 internal failure, 2 bad input (one line naming file, line and field),
            3 compare --fail-on-regression found a regression
"""


class OneLineErrors(argparse.ArgumentParser):
    """Bad flags get the one-line error and exit code 2 every other bad input gets
    (argparse's default prints the whole usage block first)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _suite_arg(text: str) -> Path:
    # per command: --help loads no suite machinery
    from toolkit.bundled import suite_path

    return suite_path(Path(text))


def _version() -> str:
    return f"adaptbench {__version__} (Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrors(
        prog="adaptbench", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Prompt, retrieve or fine-tune? Runs the same task, on the same split, through every "
                    "approach and reports quality (with 95% CIs), cost and a recommendation side by side.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_run_parser, _validate_parser, _report_parser, _compare_parser, _export_parser, _serve_parser, _logs_parser, _ab_parser, _runs_parser, _ls_parser,
                _init_parser, _data_parser, _fields_parser):
        add(sub)
    return p


def _run_parser(sub) -> None:
    r = sub.add_parser("run", help="run a suite's arms and write a run directory with results and report",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run every arm of SUITE on its test split. Writes config.yaml, env.json, "
                                   "samples.jsonl, results.json, report.md and report.html into the run directory. "
                                   "Indexes, adapters and answers are cached by content hash "
                                   "($ADAPTBENCH_CACHE, default ~/.cache/adaptbench): an unchanged rerun takes seconds.")
    r.add_argument("suite", type=_suite_arg, help="a suite YAML file, or the name of a bundled suite "
                   "(`adaptbench ls` lists them), e.g. demo")
    r.add_argument("--strategies", "-s", help="comma-separated arms to run (default: all arms of the suite)")
    r.add_argument("--limit", "-n", type=int, help="score a random sample of N test examples (seeded by the suite's "
                   "seed, stratified by label for label tasks; the report says so): quick checks")
    r.add_argument("--out", "-o", type=Path, help="run directory (default: reports/<suite>-<timestamp>)")
    r.add_argument("--data-dir", type=Path, help="where {data_dir} in the suite points (default: $ADAPTBENCH_DATA_DIR)")
    r.add_argument("--weights", help="decision weights, e.g. quality=0.7,latency=0.1 (criteria: quality, latency, "
                                      "cost_per_query, setup, knowledge_update, data_needed)")
    r.add_argument("--judge-url", metavar="URL", help="OpenAI-compatible endpoint of the LLM judge for ragas' judged "
                   "metrics, e.g. http://localhost:8000/v1 (overrides the suite's judge.base_url)")
    r.add_argument("--judge-model", metavar="MODEL", help="the judge model: the name the endpoint serves, or without "
                   "--judge-url a local Hugging Face model served on loopback (e.g. smollm2-135m-instruct)")
    r.add_argument("--judge-key-env", metavar="VAR", help="environment variable holding the endpoint's API key")
    r.add_argument("--seeds", type=int, default=1, metavar="N", help="repeat the whole comparison with N seeds "
                   "(split, few-shot choice, training seed) and report mean ± std across them")
    r.add_argument("--folds", type=int, metavar="K", help="k-fold cross-validation: pool the labelled examples, cut "
                   "K folds (stratified by label), run every arm K times with each fold as the test split, and report "
                   "mean ± std across folds and the pooled estimate with its CI; for small data (costs K× the "
                   "training); the same command with the same --out resumes an interrupted run")
    r.add_argument("--ray", metavar="ADDRESS", help="run each arm (of each seed and fold) as a task on a Ray cluster: "
                   "HOST:PORT of its head, auto, or local (a cluster of this machine's cores, for this run); run it on a "
                   "node of the cluster; results land in one run directory here (needs pip install 'adaptbench[ray]')")
    r.add_argument("--no-data-check", action="store_true", help="skip the data checks a run starts with (adaptbench "
                   "data check without the probe and the near duplicates; errors stop the run)")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _validate_parser(sub) -> None:
    v = sub.add_parser("validate", help="check a suite file and its data without loading any model")
    v.add_argument("suite", type=_suite_arg, help="a suite YAML file, or the name of a bundled suite")
    v.add_argument("--data-dir", type=Path, help="where {data_dir} in the suite points (default: $ADAPTBENCH_DATA_DIR)")


def _report_parser(sub) -> None:
    rep = sub.add_parser("report", help="re-render report.md and report.html from a run directory (loads no model)")
    rep.add_argument("run_dir", type=Path)
    rep.add_argument("--weights", help="decision weights, e.g. quality=0.7,latency=0.1 (default: the suite's)")


def _compare_parser(sub) -> None:
    c = sub.add_parser("compare", help="compare runs against the first (baseline): per arm and metric, difference with CI",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Compare runs, e.g. before/after a knowledge-base change or two base models. "
                                   "Differences are paired per example when the runs share test examples.")
    c.add_argument("runs", type=Path, nargs="+", help="run directories; the first is the baseline")
    c.add_argument("--out", "-o", type=Path, help="where compare.md/html/json go (default: reports/compare-<timestamp>)")
    c.add_argument("--fail-on-regression", metavar="METRIC", action="append", default=[],
                   help="exit 3 when METRIC got significantly worse for any arm (repeatable; 'any' for every metric)")


def _export_parser(sub) -> None:
    e = sub.add_parser("export", help="write a fine-tuned arm's adapter, or the merged model, to a folder")
    e.add_argument("run_dir", type=Path)
    e.add_argument("out", type=Path, help="output folder (must not exist or be empty)")
    e.add_argument("--strategy", "-s", required=True, help="the arm to export, e.g. finetune")
    e.add_argument("--merge", action="store_true", help="merge the adapter into the base model: a plain "
                   "transformers model folder (safetensors + tokenizer); without it, the peft adapter alone")


def _serve_parser(sub) -> None:
    sv = sub.add_parser(
        "serve", help="serve a run's arms (or a base model) over an OpenAI-compatible API, logging every prediction",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve arms of a run exactly as they were evaluated (same prompts, retrieval index,\n"
                    "adapter and generation settings) over an OpenAI-compatible API: /v1/chat/completions\n"
                    "(stream: true for server-sent events), /v1/completions, /v1/models, /v1/feedback,\n"
                    "/healthz and Prometheus /metrics. Every answered request is a row in a SQLite log\n"
                    "(RUN_DIR/serve.db unless --log), committed before the response is sent. With several\n"
                    "--arm NAME=WEIGHT, requests to the router's model name (the suite name) are split by\n"
                    "weight, sticky per user (the `user` field or an X-User header); an arm's own name\n"
                    "always reaches that arm. Concurrent requests are batched.\n\n"
                    "With --model instead of RUN_DIR: a base model, for judges and likelihood metrics\n"
                    "(/v1/completions with echo and logprobs), and OpenAI's fine-tuning API (/v1/files,\n"
                    "/v1/fine_tuning/jobs): a job trains a LoRA adapter here and its ft:... model is\n"
                    "served at once.\n\n"
                    "Without --api-key-env there is no authentication, so it binds to 127.0.0.1 unless\n"
                    "--insecure is given.",
        epilog="examples:\n"
               "  adaptbench serve reports/demo-20261124-101500 --arm rag_finetune\n"
               "  adaptbench serve reports/demo-20261124-101500 --arm rag=80 --arm rag_finetune=20 \\\n"
               "      --host 0.0.0.0 --api-key-env ADAPTBENCH_API_KEY\n"
               "  adaptbench serve --model smollm2-135m-instruct --port 8000\n\n"
               "  python -c \"import openai; c = openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='x'); "
               "print(c.chat.completions.create(model='rag_finetune', messages=[{'role': 'user', "
               "'content': 'How long is the warranty?'}]).choices[0].message.content)\"\n"
               "  curl -s localhost:8000/v1/feedback -H 'Content-Type: application/json' -d '{\"request_id\": \"chatcmpl-...\", \"score\": 1}'\n"
               "  adaptbench logs reports/demo-20261124-101500/serve.db\n"
               "  adaptbench ab reports/demo-20261124-101500/serve.db")
    sv.add_argument("run_dir", type=Path, nargs="?", help="a run directory (from adaptbench run)")
    sv.add_argument("--arm", action="append", default=[], metavar="ARM[=WEIGHT]",
                    help="an arm of the run to serve; repeat for an A/B test with weights (rag=80 --arm finetune=20); "
                    "OTHER_RUN:ARM[=WEIGHT] serves an arm of another run beside it, as ARM@OTHER_RUN (a retrained "
                    "version against the old one)")
    sv.add_argument("--model", help="serve a base model instead: bundled name (smollm2-135m-instruct), local model "
                    "folder or Hugging Face id")
    sv.add_argument("--name", help="the model name clients send: with --model, default the model as given; with "
                    "RUN_DIR, the A/B router's name (default: the suite's name)")
    sv.add_argument("--log", type=Path, metavar="PATH", help="the prediction log (default RUN_DIR/serve.db)")
    sv.add_argument("--api-key-env", metavar="VAR", help="require `Authorization: Bearer KEY`, KEY being the value "
                    "of this environment variable (e.g. ADAPTBENCH_API_KEY)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--insecure", action="store_true", help="allow a --host other than loopback without "
                    "--api-key-env, answering any Host name (anyone who can reach it can use the model)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    sv.add_argument("--max-batch", type=int, default=16, help="most requests answered together (default 16)")
    sv.add_argument("--max-wait-ms", type=float, default=25.0,
                    help="how long a request waits for others to batch with (default 25 ms)")
    _serve_limits(sv)
    sv.add_argument("--allowed-host", action="append", default=[], metavar="NAME", help="without --api-key-env only "
                    "loopback Host names are answered (421 otherwise: a web page cannot reach the server through DNS "
                    "rebinding); add a name clients use, e.g. --allowed-host myserver.internal")
    sv.add_argument("--no-fine-tuning", action="store_true", help="with --model: no /v1/files and /v1/fine_tuning "
                    "routes")
    sv.add_argument("--allow-changes", action="store_true", help="serve an arm even if its data, index, model or "
                    "precision differ from what the run evaluated (a warning says what)")
    sv.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="with --model: the precision (default: bfloat16 where the CPU has it, else float32)")
    sv.add_argument("--device", default="auto", help="with --model: 'auto', 'cpu', 'cuda', 'cuda:1'...")
    sv.add_argument("--jobs-dir", type=Path, metavar="DIR", help="with --model: where the fine-tuning API keeps "
                    "uploaded files and jobs (default ~/.cache/adaptbench/finetuning)")


def _serve_limits(sv) -> None:
    lim = sv.add_argument_group("limits (each checked before a request is queued; past it, OpenAI's error JSON)")
    lim.add_argument("--max-queue", type=int, default=256, help="requests that may wait for a batch; more get "
                     "HTTP 429 with Retry-After (default 256)")
    lim.add_argument("--max-tokens", type=int, default=4096, help="most tokens one answer may generate (default 4096)")
    lim.add_argument("--max-prompt-tokens", type=int, default=0, help="most tokens one prompt may hold (default: the "
                     "model's context; prompt + max_tokens past the context is 400 context_length_exceeded)")
    lim.add_argument("--max-batch-tokens", type=int, default=0, help="most tokens (prompt + max_tokens) one batch "
                     "holds, bounding its memory (default: no bound beyond --max-batch)")
    lim.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest JSON request body (default 1 MiB; "
                     "413 past it)")
    lim.add_argument("--max-upload-bytes", type=int, default=64 << 20, help="with --model: largest fine-tuning file "
                     "upload (default 64 MiB)")
    lim.add_argument("--max-connections", type=int, default=512, help="open connections; more get 503 (default 512)")


def _logs_parser(sub) -> None:
    lg = sub.add_parser(
        "logs", help="list a prediction log (serve.db), or export corrected and well-rated answers as training data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="List what `adaptbench serve` answered, with the latest feedback on each answer, or\n"
                    "export training data: every corrected answer (with its correction) and every answer\n"
                    "rated at least --min-score, as OpenAI chat-format JSONL, which a suite reads as\n"
                    "train data.",
        epilog="examples:\n  adaptbench logs reports/demo-.../serve.db --arm rag --feedback any\n"
               "  adaptbench logs reports/demo-.../serve.db --export feedback.jsonl --min-score 1")
    lg.add_argument("db", type=Path, help="a prediction log (serve.db)")
    lg.add_argument("--arm", help="only this arm")
    lg.add_argument("--user", help="only this user id")
    lg.add_argument("--since", metavar="TIME", help="only from this UTC time on (ISO, e.g. 2026-11-24 or 2026-11-24T10:00)")
    lg.add_argument("--feedback", choices=["any", "none", "corrected"], help="only rows with feedback, without, or "
                    "with a correction")
    lg.add_argument("--limit", type=int, default=50, help="the latest N rows (default 50; 0: all)")
    lg.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    lg.add_argument("--export", type=Path, metavar="TRAIN.jsonl", help="write training data here instead of listing")
    lg.add_argument("--min-score", type=float, default=1.0, help="with --export: the lowest score whose answer is "
                    "kept as it was (default 1.0: thumbs up); corrections are always kept")


def _ab_parser(sub) -> None:
    ab = sub.add_parser(
        "ab", help="the A/B test in a prediction log: per arm, feedback with 95%% CIs, the difference and p-value",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Per arm: requests, feedback count and mean score with a 95% CI, latency p50/p95; then\n"
                    "each arm against the baseline (the first arm, or --baseline): the difference in mean\n"
                    "score with a 95% CI and Welch's p-value, and, while it cannot yet tell, roughly how\n"
                    "many more ratings per arm it needs. Also writes an HTML page (--html).",
        epilog="example:\n  adaptbench ab reports/demo-.../serve.db --html ab.html")
    ab.add_argument("db", type=Path, help="a prediction log (serve.db)")
    ab.add_argument("--baseline", help="the arm the others are compared with (default: the first arm logged)")
    ab.add_argument("--since", metavar="TIME", help="only requests from this UTC time on")
    ab.add_argument("--routed-only", action="store_true", help="only requests the router assigned (not those "
                    "that named an arm)")
    ab.add_argument("--html", type=Path, metavar="PATH", help="where to write the HTML page (default: ab.html "
                    "beside the log)")


def _runs_parser(sub) -> None:
    rs = sub.add_parser("runs", help="list past runs with their headline numbers")
    rs.add_argument("--root", type=Path, default=Path("reports"), help="where run directories live (default: reports)")


def _ls_parser(sub) -> None:
    sub.add_parser("ls", help="list strategies, data loaders, bundled models and bundled suites")


def _init_parser(sub) -> None:
    i = sub.add_parser("init", help="look at your data and write a starter suite for it",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Look at DATA (a .jsonl/.csv/.tsv/.parquet file, a folder with train.* and test.* "
                                   "files, or a datasets save_to_disk folder), tell the task and the columns from its "
                                   "rows, and write a starter suite with every arm that applies, a comment on each "
                                   "setting and the limits of a first run on this machine. The suite is loaded and its "
                                   "data read before it is written.",
                       epilog="examples:\n  adaptbench init tickets.csv\n"
                              "  adaptbench init faq.jsonl --kb docs/ -o faq.yaml\n"
                              "  adaptbench init reviews.parquet --input body --target stars --task regression")
    i.add_argument("data", type=Path, metavar="DATA", help="your data file or folder")
    i.add_argument("--kb", type=Path, metavar="FOLDER", help="a folder of .md/.txt documents: adds the retrieving arms")
    i.add_argument("-o", "--out", type=Path, help="the suite file to write (default: NAME.yaml here)")
    i.add_argument("--task", choices=["qa", "classification", "regression"], help="instead of the guess")
    i.add_argument("--input", metavar="COLUMN", help="the column holding the question or text")
    i.add_argument("--target", metavar="COLUMN", help="the column holding the answer or label")
    i.add_argument("--force", action="store_true", help="replace the suite file if it exists")


def _data_parser(sub) -> None:
    d = sub.add_parser("data", help="look at your data before any model trains (check), or convert and split it "
                       "(prepare)", description="adaptbench data check: one report on a data file or a suite's data. "
                       "adaptbench data prepare: convert, deduplicate, balance and split a data file.")
    dsub = d.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    c = dsub.add_parser(
        "check", help="format problems with their lines, lengths in tokens, duplicates and leakage, labels, "
        "training time and cost: data_report.html/json", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check a data file (or every data file of a suite) the way OpenAI's prepare_data tool and "
                    "chat-format cookbook do, and more: every malformed line with its number, counts per split, "
                    "tokens per role with the generator's tokenizer and how many examples max_seq_length would "
                    "truncate, exact and near duplicates (MiniLM cosine) within and across splits (leakage), the "
                    "label distribution, and the training tokens, time (from a short measured probe) and cost.\n\n"
                    "Writes data_report.html and data_report.json. Exit 0 clean, 1 warnings, 2 errors. "
                    "`adaptbench run` runs the same checks (without the probe and the near duplicates) first and "
                    "stops on errors.",
        epilog="examples:\n  adaptbench data check tickets.csv\n  adaptbench data check my_suite.yaml\n"
               "  adaptbench data check banking77 --data-dir ../shared/datasets --no-probe")
    c.add_argument("target", metavar="FILE|SUITE", help="a data file or folder, a suite YAML, or a bundled suite's name")
    c.add_argument("--data-dir", type=Path, help="where {data_dir} in the suite points (default: $ADAPTBENCH_DATA_DIR)")
    c.add_argument("--out", "-o", type=Path, help="where data_report.html/json go (default: reports/data-<name>)")
    c.add_argument("--task", choices=["qa", "classification", "regression"], help="for a data file: instead of the "
                   "guess")
    c.add_argument("--input", metavar="COLUMN", help="for a data file: the column holding the question or text")
    c.add_argument("--target", dest="target_col", metavar="COLUMN", help="for a data file: the answer or label column")
    c.add_argument("--near", type=float, default=0.95, metavar="COSINE", help="near duplicates: questions whose MiniLM "
                   "embeddings have at least this cosine similarity (default 0.95; 0 turns the search off)")
    c.add_argument("--no-probe", action="store_true", help="no measured training probe (the time estimate is left out)")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    pr = dsub.add_parser(
        "prepare", help="convert a data file to chat, prompt/completion, qa or label JSONL; dedupe, balance, split",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read IN (CSV, TSV, JSON, JSONL, Parquet or a saved Hugging Face dataset), write OUT as JSON "
                    "Lines in the format asked for: OUT/train.jsonl, validation.jsonl and test.jsonl with --split, "
                    "else the one file OUT. prepare_report.json beside them says what changed and why. JSONL, CSV, "
                    "TSV and Parquet are read as they stream (twice), so memory stays bounded whatever the size; "
                    "nothing is written unless everything is.",
        epilog="examples:\n  adaptbench data prepare tickets.csv data/ --format label --split 0.8/0.1/0.1 --stratify\n"
               "  adaptbench data prepare faq.parquet faq.jsonl --format chat --dedupe exact\n"
               "  adaptbench data prepare reviews.csv data/ --format label --fields input=body,label=stars "
               "--split 0.8/0.1/0.1 --balance oversample")
    pr.add_argument("src", type=Path, metavar="IN", help="the data file or saved dataset folder")
    pr.add_argument("dst", type=Path, metavar="OUT", help="a folder (with --split) or a .jsonl file; must not exist")
    pr.add_argument("--format", required=True, choices=["chat", "prompt_completion", "qa", "label"],
                    help="chat: OpenAI messages; prompt_completion; qa: question/answer; label: text/label")
    pr.add_argument("--split", metavar="TRAIN/VAL/TEST", help="fractions, e.g. 0.8/0.1/0.1 (seeded; exact counts)")
    pr.add_argument("--stratify", action="store_true", help="the same label proportions in every split")
    pr.add_argument("--seed", type=int, default=0, help="seed of the split, the sampling and the balancing (default 0)")
    pr.add_argument("--dedupe", choices=["exact", "near"], help="drop duplicate rows: exact (same question and answer "
                    "after normalising case, spacing and punctuation) or near (MiniLM cosine >= --near)")
    pr.add_argument("--near", type=float, default=0.95, metavar="COSINE", help="threshold of --dedupe near "
                    "(default 0.95)")
    pr.add_argument("--balance", choices=["oversample", "undersample"], help="label tasks: even out the train "
                    "split's classes (seeded); validation and test keep the true distribution")
    pr.add_argument("--fields", metavar="OURS=THEIRS,...", help="which columns hold what, e.g. input=body,label=stars "
                    "(default: guessed as adaptbench init does)")
    pr.add_argument("--task", choices=["qa", "classification", "regression"], help="instead of the guess")
    pr.add_argument("--hf-split", metavar="NAME", help="the split of a saved DatasetDict folder")
    pr.add_argument("--skip-bad", action="store_true", help="drop malformed rows (listed in prepare_report.json) "
                    "instead of stopping at the first")
    pr.add_argument("--force", action="store_true", help="replace OUT if it exists")
    pr.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _fields_parser(sub) -> None:
    f = sub.add_parser("suite-fields", help="every field a suite can hold: type, default, description",
                       description="Every field a suite file can hold, read from the schema: its type, bounds, "
                                   "default and description (docs/suite-reference.md is the same, as Markdown).")
    f.add_argument("section", nargs="?", metavar="SECTION", help="one section: suite, data, data.file, generator, "
                   "embedder, strategies (every strategy type) or one of them (finetune, rag...), augment, search, "
                   "decision, judge, prices (default: all)")


def main(argv: list[str] | None = None) -> int:
    # per command: --help and validate load only what they use
    from toolkit.models import keep_freed_memory
    keep_freed_memory()
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    if getattr(args, "quiet", False):
        os.environ["ADAPTBENCH_QUIET"] = "1"  # for child processes
        # per command: --help and validate load only what they use
        from toolkit import progress
        progress.quiet = True
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    finally:
        D.shutdown()


def cmd_run(args) -> int:
    _quiet_libraries()
    # per command: --help and validate load only what they use
    from toolkit import cluster
    from toolkit.harness import run_suite
    from toolkit.progress import console, log
    from toolkit.reporting.decision import parse_weights
    from toolkit.reporting.report import recommendation, render_run, terminal_table
    from toolkit.runs import load_run
    from toolkit.suites import load_suite

    if args.limit is not None and args.limit < 1:
        raise UserError("must be at least 1", field="--limit")
    if args.seeds < 1:
        raise UserError("must be at least 1", field="--seeds")
    if args.folds is not None:
        if args.folds < 2:
            raise UserError("must be at least 2", field="--folds")
        if args.seeds > 1 or args.limit is not None:
            raise UserError("cannot be combined with " + ("--seeds" if args.seeds > 1 else "--limit") +
                            " (each fold's test split is the sample: use fewer folds or a smaller suite)",
                            field="--folds")
    if args.ray is not None:
        if D.is_distributed():
            raise UserError("cannot run under a distributed launcher: give the cluster the whole run", field="--ray")
        cluster.check_address(args.ray)
    _check_data_dir(args.data_dir)
    weights = parse_weights(args.weights) or None
    loaded = load_suite(args.suite, args.data_dir)
    if args.judge_url or args.judge_model or args.judge_key_env:
        # per command: --help and validate load only what they use
        from pydantic import ValidationError

        from toolkit.config import JudgeConfig
        base = loaded.suite.judge.model_dump() if loaded.suite.judge else {}
        model = args.judge_model or base.get("model")
        if not model:
            raise UserError("say which judge model to use", field="--judge-model")
        try:
            loaded.suite.judge = JudgeConfig(**{**base, "model": model, "base_url": args.judge_url or base.get("base_url"),
                                            "api_key_env": args.judge_key_env or base.get("api_key_env")})
        except ValidationError as e:
            err = e.errors()[0]
            flag = {"base_url": "--judge-url", "model": "--judge-model", "api_key_env": "--judge-key-env"}
            raise UserError(err["msg"].removeprefix("Value error, "), field=flag.get(str(err["loc"][0]), "judge")) from None
    only = [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else None
    data_note = None
    if not args.no_data_check:
        # per command: --help and validate load only what they use
        from toolkit.bundled import bundled_suites
        from toolkit.reporting.data_report import check_before_run
        name = next((k for k, v in bundled_suites().items() if v == args.suite), str(args.suite))  # `demo`, not its path
        data_note = check_before_run(loaded, name)
    if args.ray is not None:
        cluster.connect(args.ray)
    try:
        if args.seeds > 1:
            return _run_seeds(loaded, args, only, data_note)
        if args.folds is not None:
            return _run_folds(loaded, args, only, data_note)
        run, results = run_suite(loaded, only=only, limit=args.limit, out=args.out)
    finally:
        cluster.disconnect()
    if run is None:  # a helper process of a distributed launch: it trained, process 0 reports
        return 0
    md, html = render_run(run.path, weights)
    console.print()
    console.print(terminal_table(results))
    for s in recommendation(results, load_run(run.path)[1], weights):
        log(s)
    if data_note:
        log(data_note)
    log(f"\nRun directory: {run.path}\nReport: {html}")
    print(run.path)  # stdout: the run directory, for scripts
    return 0 if results.status == "success" else 1


def _repeat_summary(title: str, summary: dict, cell, n_metrics: int, data_note: str | None, md: Path) -> int:
    """The table of a --seeds or --folds run (arm x metric, `cell(per_metric_dict)` each), the data
    check's line, where the summary is; the parent folder on stdout. Exit 1 if a run failed."""
    # per command: --help and validate load only what they use
    from rich.table import Table

    from toolkit.progress import console, log
    metrics = [m for m in summary["metrics_order"] if any(m in a for a in summary["arms"].values())][:n_metrics]
    t = Table(title=title)
    t.add_column("arm", style="bold")
    for m in metrics:
        t.add_column(m, justify="right")
    for arm, per in summary["arms"].items():
        t.add_row(arm, *[cell(per[m]) if m in per else "–" for m in metrics])
    console.print(t)
    if data_note:
        log(data_note)
    log(f"\nSummary: {md}")
    print(md.parent)
    return 0 if all(s == "success" for s in summary["statuses"].values()) else 1


def _run_seeds(loaded, args, only, data_note: str | None = None) -> int:
    # per command: --help and validate load only what they use
    from toolkit.reporting.report import render_run
    from toolkit.seeds import run_seeds
    parent, summary = run_seeds(loaded, args.seeds, only=only, limit=args.limit, out=args.out, on_run=render_run)
    if parent is None:
        return 0
    return _repeat_summary(f"{loaded.suite.name}: mean ± std across seeds {', '.join(map(str, summary['seeds']))}",
                           summary, lambda d: f"{d['mean']:.3f} ± {d['std']:.3f}", 6, data_note, parent / "seeds.md")


def _run_folds(loaded, args, only, data_note: str | None = None) -> int:
    # per command: --help and validate load only what they use
    from toolkit.folds import run_folds
    from toolkit.reporting.report import render_run
    parent, summary = run_folds(loaded, args.folds, only=only, out=args.out, on_run=render_run)

    def cell(d: dict) -> str:
        p = d.get("pooled")
        return f"{d['mean']:.3f} ± {d['std']:.3f}" + (f"\n{p['mean']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}]" if p else "")
    return _repeat_summary(f"{loaded.suite.name}: {summary['how']} · mean ± std across folds · pooled [95% CI]",
                           summary, cell, 4, data_note, parent / "folds.md")


def _check_data_dir(d: Path | None) -> None:
    if d is not None and not d.is_dir():
        raise UserError("not a folder" if d.exists() else "folder not found", file=d, field="--data-dir")


def cmd_validate(args) -> int:
    # per command: --help and validate load only what they use
    from toolkit.data.suite_data import load_task_data
    from toolkit.preflight import check_suite
    from toolkit.suites import load_suite

    _check_data_dir(args.data_dir)
    loaded = load_suite(args.suite, args.data_dir)
    data = load_task_data(loaded)
    check_suite(loaded, data, loaded.arms)
    sizes = data.splits.sizes()
    print(f"{args.suite}: ok · task {loaded.suite.task} · arms {', '.join(loaded.arms)} · "
          f"train {sizes['train']} / validation {sizes['validation']} / test {sizes['test']}"
          + (f" · {len(data.kb.documents)} documents" if data.kb else "")
          + (f" · {len(data.labels)} labels" if data.labels else ""))
    for n in data.splits.notes:
        print(f"  note: {n}")
    return 0


def cmd_report(args) -> int:
    # per command: --help and validate load only what they use
    from toolkit.reporting.decision import parse_weights
    from toolkit.reporting.report import render_run
    from toolkit.runs import RunDir
    RunDir.open(args.run_dir)  # a UserError naming the folder when it holds no run
    md, html = render_run(args.run_dir, parse_weights(args.weights) or None)
    print(html)
    return 0


def cmd_compare(args) -> int:
    # per command: --help and validate load only what they use
    from rich.table import Table

    from toolkit.progress import console
    from toolkit.reporting.compare import EXIT_REGRESSION, compare_runs, default_out, render_compare, verdict

    if len(args.runs) < 2:
        raise UserError("give at least two run directories (the first is the baseline)", field="runs")
    cmp = compare_runs(args.runs)
    known = {r["metric"] for r in cmp["rows"]}
    for m in args.fail_on_regression:
        if m != "any" and m not in known:
            raise UserError(f"metric '{m}' is not in both runs (have: {', '.join(sorted(known))})",
                            field="--fail-on-regression")
    md, html = render_compare(cmp, args.out or default_out())
    t = Table(title=f"against baseline {args.runs[0]}")
    for col in ("run", "arm", "metric", "baseline", "now", "Δ [95% CI]", "verdict"):
        t.add_column(col, justify="left" if col in ("run", "arm", "metric", "verdict") else "right")
    for r in cmp["rows"]:
        style = "red" if r["regression"] else ("green" if r["improvement"] else "")
        t.add_row(Path(r["run"]).name, r["arm"], r["metric"], f"{r['baseline']:.3f}", f"{r['value']:.3f}",
                  f"{r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]", f"[{style}]{verdict(r)}[/]" if style else verdict(r))
    console.print(t)
    # per command: --help and validate load only what they use
    from toolkit.reporting.compare import training_lines
    for line in training_lines(cmp):
        print(line)
    print(html)
    gated = [r for r in cmp["rows"] if r["regression"] and ("any" in args.fail_on_regression or r["metric"] in args.fail_on_regression)]
    if gated:
        print(f"regression: {', '.join(sorted({r['arm'] + ' ' + r['metric'] for r in gated}))}", file=sys.stderr)
        return EXIT_REGRESSION
    return 0


def cmd_export(args) -> int:
    _quiet_libraries()
    # per command: --help and validate load only what they use
    from toolkit.training.export import export
    print(export(args.run_dir, args.strategy, args.out, merge=args.merge))
    return 0


def cmd_serve(args) -> int:
    _quiet_libraries()
    if not 0 <= args.port <= 65535:
        raise UserError(f"{args.port} is not a port number", field="--port")
    for flag in ("max_batch", "max_queue", "max_tokens", "max_body_bytes", "max_upload_bytes", "max_connections"):
        if getattr(args, flag) < 1:
            raise UserError("must be at least 1", field="--" + flag.replace("_", "-"))
    for flag in ("max_prompt_tokens", "max_batch_tokens"):
        if getattr(args, flag) < 0:
            raise UserError("must be 0 (no bound) or more", field="--" + flag.replace("_", "-"))
    if (args.run_dir is None) == (args.model is None):
        raise UserError("give a run directory (with --arm) or --model, not both and not neither", field="serve")
    if args.run_dir is not None and not args.arm:
        raise UserError("name the arm(s) to serve: --arm rag_finetune (or --arm rag=80 --arm finetune=20)",
                        field="--arm")
    if args.model is not None and (args.arm or args.log):
        raise UserError("--arm and --log are for serving a run directory", field="--arm" if args.arm else "--log")
    # per command: --help and validate load only what they use
    from toolkit.serving.serve import api_key_from
    key = api_key_from(args.api_key_env)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key and not args.insecure:
        raise UserError(f"{args.host} is reachable from other machines and no API key is set; add --api-key-env VAR, "
                        f"bind to 127.0.0.1, or add --insecure", field="--host")
    # per command: --help and validate load only what they use
    from toolkit.serving.app import Limits
    limits = Limits(max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens, max_body=args.max_body_bytes,
                    max_upload=args.max_upload_bytes, max_queue=args.max_queue, max_batch_tokens=args.max_batch_tokens,
                    max_connections=args.max_connections)
    hosts = tuple(args.allowed_host) + (("*",) if args.insecure else ())
    if args.model is not None:
        # per command: --help and validate load only what they use
        from toolkit.preflight import check_model_name
        check_model_name(args.model, field="--model")
        # per command: --help and validate load only what they use
        from toolkit.serving.serve import serve_model
        return serve_model(args.model, name=args.name or args.model, host=args.host, port=args.port,
                           max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, dtype=args.dtype,
                           device=args.device, api_key=key, limits=limits, jobs_dir=args.jobs_dir,
                           fine_tuning=not args.no_fine_tuning, allowed_hosts=hosts)
    # per command: --help and validate load only what they use
    from toolkit.serving.serve import serve_run
    return serve_run(args.run_dir, args.arm, name=args.name, host=args.host, port=args.port, max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms, log_path=args.log, api_key=key, allow_changes=args.allow_changes,
                     limits=limits, allowed_hosts=hosts)


def cmd_logs(args) -> int:
    # per command: --help and validate load only what they use
    from toolkit.serving.logs_cli import export_training, list_logs
    if args.export:
        return export_training(args.db, args.export, min_score=args.min_score, arm=args.arm, since=args.since)
    return list_logs(args.db, arm=args.arm, user=args.user, since=args.since, feedback=args.feedback,
                     limit=args.limit, as_json=args.json)


def cmd_ab(args) -> int:
    # per command: --help and validate load only what they use
    from toolkit.serving.ab import ab_report
    return ab_report(args.db, baseline=args.baseline, since=args.since, routed_only=args.routed_only, html=args.html)


def cmd_runs(args) -> int:
    # per command: --help and validate load only what they use
    from toolkit.reporting.compare import list_runs
    runs = list_runs(args.root)
    if not runs:
        print(f"no runs under {args.root}")
        return 0
    for r in runs:
        arms = "  ".join(f"{n} {v:.3f}" for n, v in r["arms"].items())
        print(f"{r['run']}  {r['status']:9s} {r['suite']}  n={r['n']}  {r['metric']}: {arms}")
    return 0


def cmd_init(args) -> int:
    _quiet_libraries()
    # per command: --help and validate load only what they use
    from toolkit.models import pick_device
    from toolkit.starter import suite_name, write_starter

    out = args.out or Path(f"{suite_name(args.data)}.yaml")
    g = write_starter(args.data, out, kb=args.kb, task=args.task, input_col=args.input, target_col=args.target,
                      force=args.force, device=pick_device("auto").split(":")[0])
    labels = f", {len(g.labels)} labels" if g.labels else ""
    print(f"wrote {out}: task {g.task} ({g.why}{labels})")
    print(f"next:  adaptbench data check {out}      # problems in the data, with their lines, before a run\n"
          f"       adaptbench run {out} --limit 20    # a quick first look")
    return 0


def cmd_data(args) -> int:
    _quiet_libraries()
    if args.data_command == "prepare":
        # per command: --help and validate load only what they use
        from toolkit.checks.prepare import run_prepare
        return run_prepare(args)
    # per command: --help and validate load only what they use
    from toolkit.reporting.data_report import run_check
    _check_data_dir(args.data_dir)
    return run_check(args)


def cmd_fields(args) -> int:
    # per command: --help and validate load only what they use
    from toolkit.fields import render_text

    print(render_text(args.section))
    return 0


def cmd_ls(args) -> int:
    # per command: --help and validate load only what they use
    from strategies.registry import STRATEGY_TYPES
    from toolkit.bundled import bundled_suites, description
    from toolkit.data.loaders import LOADER_HELP
    from toolkit.models import BUNDLED_EMBEDDERS, BUNDLED_GENERATORS

    print("strategies:")
    for name, (_, cfg) in STRATEGY_TYPES.items():
        print(f"  {name:13s} {(cfg.__doc__ or '').strip().splitlines()[0]}")
    print("data loaders:")
    for name, h in LOADER_HELP.items():
        print(f"  {name:13s} {h}")
    print("bundled models:")
    for name, (pkg, _, install) in {**BUNDLED_GENERATORS, **BUNDLED_EMBEDDERS}.items():
        print(f"  {name:22s} ({install})")
    print("bundled suites (adaptbench run NAME; public-data ones read --data-dir):")
    for name, path in bundled_suites().items():
        print(f"  {name:22s} {description(path)}")
    return 0


def _quiet_libraries() -> None:
    # per command: --help and validate load only what they use
    import logging
    import warnings
    warnings.filterwarnings("ignore")
    for name in ("transformers", "peft", "chromadb", "llama_index", "sentence_transformers", "httpx", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        # per command: --help and validate load only what they use
        from transformers.utils import logging as tlog
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "report": cmd_report, "compare": cmd_compare,
            "export": cmd_export, "serve": cmd_serve, "logs": cmd_logs, "ab": cmd_ab, "runs": cmd_runs, "ls": cmd_ls,
            "suite-fields": cmd_fields, "init": cmd_init, "data": cmd_data}

if __name__ == "__main__":
    sys.exit(main())
