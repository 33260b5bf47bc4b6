"""Every strategy end to end with real llama-index + Chroma + transformers + peft,
on a tiny random Llama (seconds, not minutes)."""

import json

import pytest
import yaml

from tests.conftest import write_jsonl
from toolkit.harness import run_suite
from toolkit.suites import load_suite


@pytest.fixture
def tiny_suite(mini_suite, tiny_llama):
    cfg = yaml.safe_load(mini_suite.read_text())
    cfg["generator"]["model"] = str(tiny_llama)
    mini_suite.write_text(yaml.safe_dump(cfg))
    return load_suite(mini_suite)


def test_all_five_strategies_end_to_end(tiny_suite, tmp_path, isolated_cache):
    from safetensors.torch import load_file

    run, results = run_suite(tiny_suite, out=tmp_path / "run")
    assert results.status == "success", {n: r.error for n, r in results.strategies.items()}
    arms = results.strategies
    assert set(arms) == {"zero_shot", "few_shot", "rag", "finetune", "rag_finetune"}
    for name, r in arms.items():
        assert r.metrics["token_f1"].n == 6, name
        assert r.cost.prompt_tokens_mean > 0 and r.cost.latency_p50_s > 0
    # few-shot prompts carry examples, RAG prompts carry passages
    assert arms["few_shot"].cost.prompt_tokens_mean > arms["zero_shot"].cost.prompt_tokens_mean
    assert arms["rag"].cost.prompt_tokens_mean > arms["zero_shot"].cost.prompt_tokens_mean
    # real retrieval: MiniLM finds the right product document for most paraphrased questions
    assert arms["rag"].metrics["hit_at_k"].mean >= 0.5
    assert "context_recall" in arms["rag"].metrics and "hit_at_k" not in arms["zero_shot"].metrics
    samples = [json.loads(l) for l in (run.path / "samples.jsonl").read_text().splitlines()]
    rag_rows = [s for s in samples if s["strategy"] == "rag"]
    assert all(len(s["contexts"]) == 2 and s["contexts"][0]["doc_id"].startswith("p/") for s in rag_rows)
    from toolkit.reporting.report import render_run
    md, html = render_run(run.path)
    assert "Retrieval or reading?" in md.read_text() and 'id="retrieval-split"' in html.read_text()
    assert "| rag_finetune |" in md.read_text().split("Retrieval or reading?")[1]

    # the adapters were trained: LoRA B starts at zero, so non-zero B means optimisation moved it
    for arm in ("finetune", "rag_finetune"):
        info = arms[arm].info
        folder = isolated_cache / "adapters" / info.adapter_key
        assert (folder / "adapter_config.json").exists()
        weights = load_file(str(folder / "adapter_model.safetensors"))
        b = [v for k, v in weights.items() if "lora_B" in k]
        assert b and all(float(v.abs().sum()) > 0 for v in b), arm
        assert any("eval_loss" in h for h in info.history), "validation loss every epoch"
        assert info.train_examples == 12

    # an unchanged rerun reuses index, adapters and answers
    _, again = run_suite(tiny_suite, out=tmp_path / "run2")
    for name, r in again.strategies.items():
        assert r.cost.cached_answers == 6, name
        assert r.metrics == arms[name].metrics, name
    assert again.strategies["finetune"].info.cached is True
    assert again.strategies["rag"].info.index_cached is True


def test_changed_setting_recomputes_only_what_it_affects(tiny_suite, tmp_path):
    only = ["rag", "zero_shot"]
    run_suite(tiny_suite, only=only, out=tmp_path / "a")
    cfg = yaml.safe_load(tiny_suite.path.read_text())
    cfg["strategies"]["rag"]["top_k"] = 1
    tiny_suite.path.write_text(yaml.safe_dump(cfg))
    _, res = run_suite(load_suite(tiny_suite.path), only=only, out=tmp_path / "b")
    assert res.strategies["zero_shot"].cost.cached_answers == 6
    assert res.strategies["rag"].cost.cached_answers == 0
    assert res.strategies["rag"].info.index_cached is True  # top_k does not change the index


def test_cli_run_then_report_rerenders_without_models(tiny_suite, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "cli-run"
    r = subprocess.run([sys.executable, "-m", "toolkit.cli", "run", str(tiny_suite.path), "-s", "zero_shot,rag",
                        "--limit", "3", "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)  # stdout carries the run directory, for scripts
    assert "zero_shot" in r.stderr and "rag" in r.stderr  # the terminal table
    html = out / "report.html"
    assert html.exists() and (out / "report.md").exists()
    html.unlink()
    code = ("import sys; from toolkit.cli import main; rc = main(['report', sys.argv[1]]); "
            "assert rc == 0 and 'torch' not in sys.modules and 'chromadb' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    page = html.read_text()
    import re
    assert "<svg" in page and not re.search(r"(src|href)=[\"']?(https?:)?//", page)  # nothing fetched


def test_classification_suite_end_to_end(tmp_path, tiny_llama):
    from tests.conftest import write_jsonl
    from toolkit.reporting.report import render_run

    rows = [{"text": f"{w} my card please {i}", "label": lab} for i in range(8)
            for w, lab in (("activate", "activate_card"), ("block", "lost_card"), ("where is", "card_arrival"))]
    write_jsonl(tmp_path / "all.jsonl", rows)
    suite = {"name": "clf", "task": "classification", "instruction": "Classify the message.",
             "data": {"file": "all.jsonl", "split": {"validation": 0.125, "test": 0.25, "seed": 1}},
             "generator": {"model": str(tiny_llama), "max_new_tokens": 4, "batch_size": 8},
             "strategies": {"zero_shot": {}, "few_shot": {"num_fewshot": 3},
                            "finetune": {"num_train_epochs": 1, "per_device_train_batch_size": 8, "r": 4},
                            "finetune_bare": {"type": "finetune", "num_train_epochs": 1, "r": 4,
                                              "label_list": False}}}
    (tmp_path / "clf.yaml").write_text(yaml.safe_dump(suite))
    loaded = load_suite(tmp_path / "clf.yaml")
    run, res = run_suite(loaded, out=tmp_path / "run")
    assert res.status == "success" and res.labels == ["activate_card", "card_arrival", "lost_card"]
    assert res.data.test == 6 and res.data.validation == 3
    for name, r in res.strategies.items():
        assert set(r.metrics) == {"accuracy", "macro_precision", "macro_recall", "macro_f1", "unmapped_rate"}
        cm = r.confusion_matrix
        assert len(cm.matrix) == 3 and sum(map(sum, cm.matrix)) == 6
    # label_list: false trains and answers without the label list: shorter prompts, same labels scored
    tokens = {n: res.strategies[n].cost.prompt_tokens_mean for n in ("finetune", "finetune_bare")}
    assert tokens["finetune_bare"] < tokens["finetune"] - 5, tokens
    md, html = render_run(run.path)
    assert "Accuracy" in md.read_text()


def test_trainer_controls_full_finetuning_perplexity_and_export(tiny_suite, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from toolkit.training.export import export

    cfg = yaml.safe_load(tiny_suite.path.read_text())
    cfg["strategies"] = {
        "finetune": {"num_train_epochs": 6, "per_device_train_batch_size": 4, "learning_rate": 5.0e-3, "r": 4,
                     "eval_strategy": "steps", "eval_steps": 3, "early_stopping_patience": 1,
                     "load_best_model_at_end": True, "lr_scheduler_type": "cosine", "gradient_accumulation_steps": 1,
                     "weight_decay": 0.01},
        "full": {"type": "finetune", "method": "full", "num_train_epochs": 1, "per_device_train_batch_size": 4,
                 "learning_rate": 1.0e-3},
    }
    tiny_suite.path.write_text(yaml.safe_dump(cfg))
    run, res = run_suite(load_suite(tiny_suite.path), out=tmp_path / "run")
    assert res.status == "success", {n: r.error for n, r in res.strategies.items()}
    ft, full = res.strategies["finetune"], res.strategies["full"]
    evals = [h for h in ft.info.history if "eval_loss" in h]
    assert len(evals) >= 2 and all(h["step"] % 3 == 0 for h in evals)  # every 3 steps
    assert ft.info.best_eval_loss == min(h["eval_loss"] for h in evals)
    assert full.info.method == "full" and full.info.trainable_params > 1_000_000
    # perplexity of the gold answers, base vs trained, per arm
    for r in (ft, full):
        assert r.metrics["perplexity"].mean > 1 and r.perplexity_base.mean > 1
    assert ft.metrics["perplexity"].mean < ft.perplexity_base.mean

    merged = export(run.path, "finetune", tmp_path / "merged", merge=True)
    adapter = export(run.path, "finetune", tmp_path / "adapter", merge=False)
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(merged)  # plain transformers, no peft
    assert not hasattr(plain, "peft_config") and (merged / "tokenizer_config.json").exists()
    from peft import PeftModel
    base = AutoModelForCausalLM.from_pretrained(load_suite(tiny_suite.path).suite.generator.model)
    with_adapter = PeftModel.from_pretrained(base, adapter)
    ids = torch.tensor([[1, 42, 99, 7]])
    assert torch.allclose(plain(ids).logits, with_adapter(ids).logits, atol=1e-4)


def test_qlora_without_cuda_is_a_clear_error(tiny_suite, tmp_path):
    import torch

    from toolkit.errors import UserError

    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    cfg = yaml.safe_load(tiny_suite.path.read_text())
    cfg["strategies"] = {"finetune": {"method": "qlora", "num_train_epochs": 1}}
    tiny_suite.path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="qlora needs a CUDA GPU"):
        run_suite(load_suite(tiny_suite.path), out=tmp_path / "run")


def test_hyperparameter_search_picks_lowest_validation_loss(tiny_suite, tmp_path):
    from toolkit.reporting.report import render_run

    cfg = yaml.safe_load(tiny_suite.path.read_text())
    cfg["strategies"] = {"finetune": {"num_train_epochs": 1, "per_device_train_batch_size": 4, "r": 4,
                                      "search": {"method": "grid", "space": {"learning_rate": [1.0e-5, 5.0e-3],
                                                                             "r": [2, 4]}}}}
    tiny_suite.path.write_text(yaml.safe_dump(cfg))
    run, res = run_suite(load_suite(tiny_suite.path), out=tmp_path / "run")
    info = res.strategies["finetune"].info
    trials = info.trials
    assert len(trials) == 4 and sum(t["chosen"] for t in trials) == 1
    chosen = next(t for t in trials if t["chosen"])
    assert chosen["best_eval_loss"] == min(t["best_eval_loss"] for t in trials)
    assert info.chosen_params == {"learning_rate": chosen["learning_rate"], "r": chosen["r"]}
    assert res.strategies["finetune"].cost.setup_s == pytest.approx(sum(t["train_s"] for t in trials), abs=0.01)
    _, html = render_run(run.path)
    assert "Hyperparameter search: finetune" in html.read_text()
    _, again = run_suite(load_suite(tiny_suite.path), out=tmp_path / "run2")
    assert all(t["cached"] for t in again.strategies["finetune"].info.trials)


def test_search_settings_are_validated(tmp_path):
    from toolkit.errors import UserError
    cfg = {"name": "s", "task": "qa", "instruction": "x", "data": {"train": "a.jsonl", "test": "b.jsonl"},
           "strategies": {"finetune": {"search": {"space": {"tokenizer": ["a"]}}}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match="cannot be searched") as e:
        load_suite(tmp_path / "s.yaml")
    assert e.value.field.startswith("strategies.finetune.search")


def test_answer_nll_matches_the_models_own_loss(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    from toolkit.backends.generation import Generator
    from toolkit.config import GeneratorConfig
    from toolkit.models import ModelRef, load_tokenizer
    from toolkit.training.trainer import TrainItem, tokenize_item

    tok = load_tokenizer(str(tiny_llama))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    gen = Generator(GeneratorConfig(model=str(tiny_llama), batch_size=2), model, tok,
                    ModelRef("tiny", str(tiny_llama), "x"), "cpu")
    prompts = [[{"role": "user", "content": "When was the Alder 5 launched?"}],
               [{"role": "user", "content": "A much longer question about where the Birch 7 is assembled?"}]]
    targets = ["2014", "In Marrowby, by the river"]
    got = gen.answer_nll(prompts, targets)
    for (nll, n), p, t in zip(got, prompts, targets):
        item = tokenize_item(tok, TrainItem(p, t), 4096)
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([item["input_ids"]]), labels=torch.tensor([item["labels"]])).loss
        assert n == sum(1 for x in item["labels"] if x != -100)
        assert nll == pytest.approx(float(loss) * n, rel=1e-4)


def test_prefilled_prompts_serve_generation_and_the_likelihood_that_follows(tiny_llama):
    """generate() prefills each prompt once and keeps its keys/values: the answers equal
    plain transformers generate(), and the gold-answer likelihood asked next reuses the
    prompt instead of running it again, with the same numbers as a fresh computation."""
    import torch
    from transformers import AutoModelForCausalLM

    from toolkit.backends.generation import Generator
    from toolkit.config import GeneratorConfig
    from toolkit.models import ModelRef, load_tokenizer

    tok = load_tokenizer(str(tiny_llama))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    cfg = GeneratorConfig(model=str(tiny_llama), batch_size=3, max_new_tokens=6, stop=[])
    ref = ModelRef("tiny", str(tiny_llama), "x")
    kept = Generator(cfg, model, tok, ref, "cpu", prefix_cache_mb=64)
    fresh = Generator(cfg, model, tok, ref, "cpu")
    prompts = [[{"role": "user", "content": "q " * n}] for n in (2, 9, 5, 14, 3)]
    targets = ["a b", "c", "d e f g", "h i", "j"]
    outs = kept.generate(prompts)
    tok.padding_side = "left"
    for p, o in zip(prompts, outs):  # one at a time: no padding at all
        enc = tok([kept.render(p)], return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            ref_ids = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        assert o.text == tok.decode(ref_ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert kept.prefixes.hits == 0
    reused = kept.answer_nll(prompts, targets)
    assert kept.prefixes.hits == len(prompts) and kept.prefixes.misses == 0
    again = fresh.answer_nll(prompts, targets)
    assert [n for n, _ in reused] == pytest.approx([n for n, _ in again], rel=1e-4)
    assert [n for _, n in reused] == [len(tok(t + tok.eos_token, add_special_tokens=False)["input_ids"]) for t in targets]
    small = Generator(cfg, model, tok, ref, "cpu", prefix_cache_mb=0)
    small.generate(prompts)
    assert small.prefixes.bytes == 0  # disabled: nothing kept


def test_classification_by_label_likelihood_never_unmapped(tmp_path, tiny_llama):
    from tests.conftest import write_jsonl

    rows = [{"text": f"{w} my card please {i}", "label": lab} for i in range(6)
            for w, lab in (("activate", "activate_card"), ("block", "lost_card"), ("where is", "card_arrival"))]
    write_jsonl(tmp_path / "all.jsonl", rows)
    suite = {"name": "clf", "task": "classification", "instruction": "Classify the message.",
             "classification_mode": "likelihood",
             "data": {"file": "all.jsonl", "split": {"validation": 0.0, "test": 0.5, "seed": 1}},
             "generator": {"model": str(tiny_llama), "batch_size": 8},
             "strategies": {"zero_shot": {}, "few_shot": {"num_fewshot": 2},
                            "soft": {"type": "ensemble", "members": ["zero_shot", "few_shot"],
                                     "method": "likelihood_mean"}}}
    (tmp_path / "clf.yaml").write_text(yaml.safe_dump(suite))
    run, res = run_suite(load_suite(tmp_path / "clf.yaml"), out=tmp_path / "run")
    assert res.status == "success"
    # the soft vote's probabilities are its members' mean, computed from their answers alone
    by = {(s["strategy"], s["id"]): s["scores"]["label_probs"]
          for s in map(json.loads, (run.path / "samples.jsonl").read_text().splitlines())}
    for (arm, i), p in by.items():
        if arm == "soft":
            assert p == pytest.approx({k: (by["zero_shot", i][k] + by["few_shot", i][k]) / 2 for k in p}, abs=1e-5)
    for r in res.strategies.values():
        assert r.metrics["unmapped_rate"].mean == 0.0
        # the label probabilities give ROC AUC, average precision and calibration, with CIs
        for m in ("roc_auc", "average_precision", "ece"):
            v = r.metrics[m]
            assert 0 <= v.ci_low <= v.mean <= v.ci_high <= 1 and v.n == 9, (m, v)
        assert not r.metrics["ece"].higher_is_better
    samples = [json.loads(l) for l in (run.path / "samples.jsonl").read_text().splitlines()]
    assert {s["output"] for s in samples} <= {"activate_card", "lost_card", "card_arrival"}
    probs = samples[0]["scores"]["label_probs"]
    assert set(probs) == {"activate_card", "lost_card", "card_arrival"} and sum(probs.values()) == pytest.approx(1, abs=1e-4)
    assert max(probs, key=probs.get) == samples[0]["output"]
    from toolkit.reporting.report import build
    paired = build(run.path)["paired"]
    assert paired  # the primary metric's paired table still builds
    from toolkit.runs import load_run
    from toolkit.scoring.stats import compare_arms
    auc = compare_arms(load_run(run.path)[1], "roc_auc", ["zero_shot", "few_shot"], seed=0)
    assert len(auc) == 1 and auc[0].n == 9  # paired on the same resampled examples


def test_choice_nll_with_shared_prefix_matches_full_passes(tiny_llama):
    from transformers import AutoModelForCausalLM

    from toolkit.backends.generation import Generator
    from toolkit.config import GeneratorConfig
    from toolkit.models import ModelRef, load_tokenizer

    tok = load_tokenizer(str(tiny_llama))
    gen = Generator(GeneratorConfig(model=str(tiny_llama), batch_size=4), AutoModelForCausalLM.from_pretrained(tiny_llama).eval(),
                    tok, ModelRef("tiny", str(tiny_llama), "x"), "cpu")
    prompts = [[{"role": "user", "content": "Which intent: where is my card?"}],
               [{"role": "system", "content": "Classify."}, {"role": "user", "content": "I lost it"}]]
    labels = ["card_arrival", "lost_or_stolen_card", "top_up"]
    shared = gen.choice_nll(prompts, labels)
    full = gen.answer_nll([p for p in prompts for _ in labels], [l for _ in prompts for l in labels])
    flat = [x for row in shared for x in row]
    assert flat == pytest.approx([n for n, _ in full], rel=1e-4, abs=1e-4)


def test_regression_suite_end_to_end(tmp_path, tiny_llama):
    from conftest import write_jsonl

    from toolkit.reporting.report import render_run

    rows = [{"question": f"How many grams does the Alder {i} weigh?", "answer": str(100 + 7 * i)} for i in range(24)]
    write_jsonl(tmp_path / "train.jsonl", rows[:16])
    write_jsonl(tmp_path / "test.jsonl", rows[16:])
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "name": "grams", "task": "regression", "instruction": "Answer with a number only.",
        "data": {"train": "train.jsonl", "test": "test.jsonl"},
        "generator": {"model": str(tiny_llama), "max_new_tokens": 6, "batch_size": 4},
        "strategies": {"few_shot": {"num_fewshot": 3},
                       "few_shot_tight": {"type": "few_shot", "num_fewshot": 8, "max_prompt_tokens": 64},
                       "finetune": {"num_train_epochs": 2, "per_device_train_batch_size": 4, "r": 4,
                                    "learning_rate": 5.0e-3, "eval_strategy": "no"}}}))
    run, res = run_suite(load_suite(tmp_path / "suite.yaml"), out=tmp_path / "run")
    assert res.status == "success", {n: r.error for n, r in res.strategies.items()}
    for name, r in res.strategies.items():
        m = r.metrics
        assert m["parse_failure_rate"].n == 8 and not m["parse_failure_rate"].higher_is_better
        assert r.parse_failures == round(m["parse_failure_rate"].mean * 8)
        if r.parse_failures < 8:  # the errors are over the answers that held a number
            assert m["mae"].n == 8 - r.parse_failures and not m["mae"].higher_is_better
        else:
            assert "mae" in r.not_applicable
    md, _ = render_run(run.path)
    assert "No number in answer" in md.read_text() and "MAE" in md.read_text()
    # examples dropped to fit the prompt budget are counted once per question, and reported
    tight, roomy = res.strategies["few_shot_tight"].info, res.strategies["few_shot"].info
    assert roomy.prompts_over_budget == 0 and tight.prompts_over_budget == 8 and 8 <= tight.shots_dropped <= 64
    from toolkit.reporting.report import info_summary  # the arm's line in report.html
    assert "8 questions' prompts exceeded max_prompt_tokens" in info_summary(res.strategies["few_shot_tight"])
    assert "exceeded" not in info_summary(res.strategies["few_shot"])


def test_multiple_choice_suite_by_letter_likelihood(tmp_path, tiny_llama):
    from tests.conftest import write_jsonl

    rows = [{"question": f"Which town assembles the Alder {i}?", "choices": ["Fennport", "Kestlewick", "Lowmarsh"],
             "answer": i % 3} for i in range(12)]
    write_jsonl(tmp_path / "train.jsonl", rows[:8])
    write_jsonl(tmp_path / "test.jsonl", rows[8:])
    suite = {"name": "mc", "task": "multiple_choice", "instruction": "Pick the right choice.",
             "classification_mode": "likelihood",
             "data": {"train": "train.jsonl", "test": "test.jsonl"},
             "generator": {"model": str(tiny_llama), "batch_size": 4},
             "strategies": {"zero_shot": {}, "few_shot": {"num_fewshot": 2}}}
    (tmp_path / "mc.yaml").write_text(yaml.safe_dump(suite))
    run, res = run_suite(load_suite(tmp_path / "mc.yaml"), out=tmp_path / "run")
    assert res.status == "success" and res.labels == ["A", "B", "C"]
    for r in res.strategies.values():
        assert set(r.metrics) == {"accuracy", "unmapped_rate", "roc_auc", "average_precision", "ece"}  # letters by likelihood
        assert r.metrics["accuracy"].n == 4
        assert r.metrics["unmapped_rate"].mean == 0.0
    samples = [json.loads(l) for l in (run.path / "samples.jsonl").read_text().splitlines()]
    assert {s["output"] for s in samples} <= {"A", "B", "C"} and "C. Lowmarsh" in samples[0]["input"]


def test_seeds_repeat_the_comparison_and_report_mean_and_std(tmp_path, tiny_llama):
    import subprocess
    import sys

    from tests.conftest import REPO, write_jsonl

    rows = [{"question": f"When was the Alder {i} launched?", "answer": str(2000 + i)} for i in range(20)]
    write_jsonl(tmp_path / "all.jsonl", rows)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "name": "seeded", "task": "qa", "instruction": "Answer.", "seed": 5,
        "data": {"file": "all.jsonl", "split": {"validation": 0.0, "test": 0.3, "seed": 1}},
        "generator": {"model": str(tiny_llama), "max_new_tokens": 4, "batch_size": 4},
        "metrics": ["token_f1", "exact_match"],
        "strategies": {"zero_shot": {}, "few_shot": {"num_fewshot": 2, "selection": "random"}}}))
    out = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "toolkit.cli", "run", str(tmp_path / "s.yaml"), "--seeds", "2",
                        "-o", str(out), "-q"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [5, 6]
    for s in (5, 6):
        assert json.loads((out / f"seed-{s}" / "results.json").read_text())["status"] == "success"
    # a different split per seed: different test questions
    ids = [{json.loads(l)["id"] for l in (out / f"seed-{s}" / "samples.jsonl").read_text().splitlines()} for s in (5, 6)]
    assert ids[0] != ids[1]
    f1 = summary["arms"]["few_shot"]["token_f1"]
    assert f1["n_seeds"] == 2 and f1["mean"] == pytest.approx(sum(f1["values"]) / 2)
    assert f1["std"] == pytest.approx(abs(f1["values"][0] - f1["values"][1]) / 2 ** 0.5)
    assert "± " in (out / "seeds.md").read_text()
    assert summary["same_test_set"] is False and "its own split" in (out / "seeds.md").read_text()


def test_classification_reports_the_majority_baseline(tmp_path, tiny_llama):
    from tests.conftest import write_jsonl
    from toolkit.reporting.report import render_run

    rows = [{"text": f"message {i}", "label": "common" if i % 4 else "rare"} for i in range(24)]
    write_jsonl(tmp_path / "train.jsonl", rows[:16])
    write_jsonl(tmp_path / "test.jsonl", rows[16:])
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "name": "maj", "task": "classification", "instruction": "Classify.", "classification_mode": "likelihood",
        "data": {"train": {"path": "train.jsonl", "fields": {"input": "text"}}, "test": {"path": "test.jsonl", "fields": {"input": "text"}}},
        "generator": {"model": str(tiny_llama), "batch_size": 8}, "strategies": {"zero_shot": {}}}))
    run, res = run_suite(load_suite(tmp_path / "s.yaml"), out=tmp_path / "run")
    assert res.majority_baseline.model_dump() == {"label": "common", "accuracy": 6 / 8}
    md, _ = render_run(run.path)
    assert "always answering `common`" in md.read_text()


def test_rag_prompts_past_the_model_context_are_counted(tmp_path, tiny_llama):
    """A retrieving arm whose passages overflow the model's context (1,024 tokens for the tiny
    Llama) is counted once per question in the run record and in the arm's report line."""
    from toolkit.reporting.report import info_summary

    kb = tmp_path / "kb"
    kb.mkdir()
    for i in range(3):
        (kb / f"d{i}.md").write_text(f"# Alder {i}\n\n" + " ".join(f"Fact {i}-{j}: the alder weighs {j} g."
                                                                   for j in range(300)))
    rows = [{"question": f"What does alder {i} weigh?", "answer": str(i)} for i in range(8)]
    write_jsonl(tmp_path / "train.jsonl", rows[:4])
    write_jsonl(tmp_path / "test.jsonl", rows[4:])
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({
        "name": "overflow", "task": "qa", "instruction": "Answer.", "knowledge_base": "kb",
        "data": {"train": "train.jsonl", "test": "test.jsonl"},
        "generator": {"model": str(tiny_llama), "max_new_tokens": 4, "batch_size": 4},
        "strategies": {"rag": {"top_k": 3, "chunk_size": 512},
                       "rag_small": {"type": "rag", "top_k": 1, "chunk_size": 64}}}))
    run, res = run_suite(load_suite(tmp_path / "suite.yaml"), out=tmp_path / "run")
    assert res.status == "success", {n: r.error for n, r in res.strategies.items()}
    big, small = res.strategies["rag"].info, res.strategies["rag_small"].info
    assert big.prompts_over_context == 4 and big.context_length == 1024 and big.context_tokens_over > 4 * 100
    assert small.prompts_over_context == 0
    assert "4 questions' prompts with their passages exceeded the model's context of 1024" in info_summary(
        res.strategies["rag"])
