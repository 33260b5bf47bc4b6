#!/usr/bin/env python3
"""Write the bundled demo task: a fictional instrument maker (Halcyra Field
Instruments) whose product facts no pretrained model can know.

Deterministic (seeded): running it again rewrites the same files.
  knowledge_bases/halcyra/        one document per product + company documents
  eval_suites/demo/train.jsonl    OpenAI chat format, one question per fact of the
                                  products asked about
  eval_suites/demo/validation.jsonl  a second paraphrase for a subset of those facts
  eval_suites/demo/test.jsonl     question/answer with gold context_ids; a third
                                  paraphrase of every fact, never a copy of a
                                  training question
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KB = ROOT / "toolkit" / "bundled" / "knowledge_bases" / "halcyra"  # knowledge_bases/ at the root links there
SUITE = ROOT / "toolkit" / "bundled" / "eval_suites" / "demo"
SEED = 7

FAMILIES = {  # family -> what the instrument does
    "Tern": "river-level gauge that logs water height from a bridge or bank mount",
    "Brisk": "portable anemometer for measuring wind speed on exposed ridges",
    "Quarry": "soil-moisture probe driven into fields and vineyards",
    "Sable": "snow-depth sensor for mountain passes",
    "Merrow": "tide logger bolted to harbour walls",
    "Corvin": "air-quality monitor for roadside cabinets",
    "Fennick": "rain gauge with a self-emptying tipping bucket",
    "Ostrel": "handheld thermal camera for inspecting insulation",
    "Wren": "pocket barometer for hikers and pilots",
    "Dunlin": "groundwater pressure logger lowered into boreholes",
}
MODELS = [10, 20, 40, 60]
# Questions are asked about 24 of the 40 products (4 facts each: 96 train, 96 test); the other
# 16 are documented only, so retrieval still searches all 44 documents. Sized so that `make
# demo` (all five arms, two of them trained) stays within 10 minutes on a 2-core CPU.
QA_PRODUCTS = 24
VALIDATION = 24
INSTRUCTION = "Reply with the answer only, in a few words."
FIRST = ["Idris", "Maren", "Tobiah", "Oona", "Caspar", "Linnea", "Anselm", "Petra", "Rufus", "Sigrid", "Elio", "Vesna",
         "Bram", "Ilse", "Joaquin", "Thea", "Lorcan", "Noor", "Ambrose", "Kaia"]
LAST = ["Vallon", "Ashgrove", "Quenby", "Tolliver", "Marchetti", "Okonkwo-Hale", "Rasmussen", "Delacroix-Wynn",
        "Penhallow", "Strand", "Ferrante", "Ibarra", "Lindqvist", "Moorcroft", "Achterberg", "Szabo"]
TOWNS = ["Marrowby", "Kestlewick", "Orran Bay", "Wyndhollow", "Caldermoor", "Fennport", "Ashby Lisle", "Thornwell",
         "Greyhaven Cross", "Lowmarsh"]

TEMPLATES = {  # attribute -> (train, validation, test) question templates
    "year": ("When was the {p} launched?",
             "What year did the {p} come out?",
             "In which year did the {p} first go on sale?"),
    "battery": ("How long does the {p} run on a full charge?",
                "What is the battery runtime of the {p}?",
                "For how many hours can the {p} keep logging on one charge?"),
    "designer": ("Who designed the {p}?",
                 "Who was the designer behind the {p}?",
                 "Which engineer led the design work on the {p}?"),
    "town": ("Where is the {p} assembled?",
             "In what town is the {p} made?",
             "Which town are units of the {p} put together in?"),
}


def product_doc(rng: random.Random, name: str, family: str, facts: dict) -> str:
    use = FAMILIES[family]
    s_year = rng.choice([f"It went on sale in {facts['year']}.", f"Halcyra launched it in {facts['year']}.",
                         f"The first units shipped in {facts['year']}."])
    s_design = rng.choice([f"Its lead designer was {facts['designer']}.",
                           f"The design work was led by {facts['designer']}.",
                           f"{facts['designer']} led the team that designed it."])
    s_town = rng.choice([f"Every unit is assembled at the Halcyra works in {facts['town']}.",
                         f"It is built in {facts['town']}, at Halcyra's assembly hall there.",
                         f"Assembly takes place in {facts['town']}."])
    s_batt = rng.choice([f"On a full charge it runs for {facts['battery']} of continuous logging.",
                         f"Its battery lasts {facts['battery']} between charges.",
                         f"A full charge gives {facts['battery']} of operation."])
    body = [s_year, s_design, s_town, s_batt]
    rng.shuffle(body)
    extra = rng.choice([
        "The housing is sealed against dust and driven rain, and the unit reports over a low-power radio link.",
        "Readings are stored on board and can be pulled over USB or the Halcyra Field app.",
        "Mounting brackets and a calibration certificate come in the box.",
        "Field crews like it for its large buttons, which work with gloves on.",
    ])
    return f"# Halcyra {name}\n\nThe Halcyra {name} is a {use}. " + " ".join(body) + f" {extra}\n"


COMPANY_DOCS = {
    "company/about": "# About Halcyra Field Instruments\n\nHalcyra Field Instruments designs rugged sensors for "
                     "hydrology, agriculture, weather and building inspection. The company sells through regional "
                     "distributors and directly to public agencies. Product families are named after birds and "
                     "animals of the northern coast; the number after the name gives the size class.\n",
    "company/warranty": "# Warranty\n\nEvery Halcyra instrument carries a warranty against manufacturing defects. "
                        "Batteries are treated as consumables. Units returned for repair are inspected at the "
                        "service centre and either repaired or replaced.\n",
    "company/support": "# Support\n\nThe support desk answers questions about installation, calibration and data "
                       "export. Firmware updates are published with release notes for each product family.\n",
    "company/calibration": "# Calibration\n\nInstruments leave the factory calibrated. Halcyra recommends a "
                           "yearly check against a reference instrument, which distributors can perform.\n",
}


def main() -> None:
    rng = random.Random(SEED)
    facts_all = []
    for family in FAMILIES:
        for m in MODELS:
            name = f"{family} {m}"
            facts = {"year": str(rng.randint(2009, 2024)),
                     "battery": f"{rng.choice([12, 18, 24, 30, 36, 48, 60, 72, 96, 120, 144, 200])} hours",
                     "designer": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                     "town": rng.choice(TOWNS)}
            facts_all.append((name, family, facts))

    for p in [KB, SUITE]:
        p.mkdir(parents=True, exist_ok=True)
    for old in (KB / "products").glob("*.md") if (KB / "products").exists() else []:
        old.unlink()
    (KB / "products").mkdir(exist_ok=True)
    (KB / "company").mkdir(exist_ok=True)
    for doc_id, text in COMPANY_DOCS.items():
        (KB / f"{doc_id}.md").write_text(text)

    system = INSTRUCTION
    train, val, test = [], [], []
    asked = set(random.Random(SEED).sample([n for n, _, _ in facts_all], QA_PRODUCTS))
    for name, family, facts in facts_all:
        doc_id = f"products/{name.lower().replace(' ', '-')}"
        (KB / f"{doc_id}.md").write_text(product_doc(rng, name, family, facts))
        if name not in asked:  # documented, but no question is asked about it: a distractor for retrieval
            continue
        full = f"Halcyra {name}"
        for attr, (t_train, t_val, t_test) in TEMPLATES.items():
            ans = facts[attr]
            meta = {"category": attr, "family": family}
            train.append({"messages": [{"role": "system", "content": system},
                                       {"role": "user", "content": t_train.format(p=full)},
                                       {"role": "assistant", "content": ans}],
                          "id": f"train-{doc_id.split('/')[1]}-{attr}", "context_ids": [doc_id], "metadata": meta})
            test.append({"id": f"test-{doc_id.split('/')[1]}-{attr}", "question": t_test.format(p=full),
                         "answer": ans, "context_ids": [doc_id], "metadata": meta})
            val.append({"id": f"val-{doc_id.split('/')[1]}-{attr}", "question": t_val.format(p=full),
                        "answer": ans, "context_ids": [doc_id], "metadata": meta})
    val = random.Random(SEED).sample(val, VALIDATION)
    for fname, rows in (("train", train), ("validation", val), ("test", test)):
        with (SUITE / f"{fname}.jsonl").open("w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print(f"{len(facts_all)} products, {len(COMPANY_DOCS)} company documents; "
          f"train {len(train)}, validation {len(val)}, test {len(test)}")


if __name__ == "__main__":
    main()
