"""python scripts/make_demo_data.py [--out FOLDER]

Write the demo instruction dataset (alpaca JSONL) to data/demo/.

The task is field extraction: read a short order sentence such as
"Please send 3 blue umbrellas to Maria Lopez in Lisbon." and answer with a compact
JSON object whose keys always come in the same order:

    {"name": "Maria Lopez", "city": "Lisbon", "item": "umbrella", "color": "blue", "quantity": 3}

The item is always singular and the quantity an integer, so a reply can be checked
exactly: parse it with json.loads and compare it with the reference object.

Files written (each line one {"id", "instruction", "input", "output"} object):

    data/demo/train.jsonl   800 examples (training splits its own validation set from these)
    data/demo/test.jsonl    200 held-out examples that training never sees

Test examples use the same sentence templates, items, colours and quantities as the
training examples, but first names, last names and cities that never appear in train,
so they measure generalisation (copying unseen values into the right keys), not
memorisation. The script uses only the standard library and a fixed seed: running it
again writes byte-identical files.
"""

import json
import random
from pathlib import Path

SEED = 1234
N_TRAIN = 800
N_TEST = 200
OUT_DIR = Path(__file__).resolve().parent.parent / "data" / "demo"

INSTRUCTION = (
    "Extract the order details from the text as JSON with the keys name, city, item, color and quantity."
)

# --- Field vocabularies ---------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Split a whitespace-separated block of words into a list (keeps long name lists compact)."""
    return text.split()


# The last HELD_OUT_* entries of each name/city list are reserved for the test split.

FIRST_NAMES = words(
    """
Maria James Anna John Sofia Michael Emma David Olivia Daniel Laura Thomas Elena Robert Sarah
Peter Julia Mark Clara Paul Nina Lucas Eva Martin Alice Simon Hannah Adam Grace Victor Irene
Oscar Lena George Rosa Henry Chloe Samuel Alma Felix Ruth Hugo Ingrid Leo Mia Ivan Nora Carlos
Zoe Pablo Helen Marco Leah Omar Amelia Jonas Ines Diego Freya Tomas Lucy Andre Vera Kenji
Aisha Rafael Greta Noah Bianca Ethan Marta Luca Yara Stefan Celia Arjun Dana Mateo Erin Farid
Heidi Kwame Iris Nikos Jade Pedro Kara Anton Lina Bruno Mira Caleb Nadia Dmitri Olga Elias
Priya Finn Rhea Gabriel Selma Hassan Tara Igor Uma Jorge Wanda Karl Xenia Liam Yasmin Malik
Zara Nils Amara Otto Beatriz Ravi Carmen Sven Daphne Tariq Esther Ulrich Fatima Viktor Gloria
Wesley Hilda Yusuf Isla Zane Joanna Axel Kira Boris Lotte Cyrus Maeve Dario Noemi Emil Pia
"""
)

LAST_NAMES = words(
    """
Lopez Smith Muller Rossi Garcia Johnson Novak Silva Brown Kowalski Moretti Jensen Costa Dubois
Fischer Murphy Santos Weber Moreau Nielsen Ferrari Walsh Schmidt Petrov Russo Larsen Romano
Keller Wagner Becker Lindqvist Andersen Horvat Varga Popescu Ivanova Berg Dahl Kaplan Okafor
Tanaka Sato Kim Park Chen Wong Singh Patel Khan Ali Haddad Nasser Mensah Diallo Moreno Ortiz
Castro Ramos Vega Navarro Torres Flores Rivera Herrera Medina Aguilar Pereira Oliveira Sousa
Teixeira Marques Lindberg Eriksson Holm Virtanen Korhonen Nowak Wojcik Dvorak Svoboda Kovacs
Szabo Toth Nagy Meyer Schulz Hoffmann Koch Richter Klein Wolf Neumann Schwarz Zimmermann Braun
Hartmann Lange Werner Krause Lehmann Kaiser Fuchs Peters Vogel Jung Hahn Roth Baker Carter
Collins Edwards Fletcher Gibson Harper Jenkins Lawson Mitchell Norris Palmer Quinn Reynolds
Sullivan Turner Underwood Webb Young Abbott Barnes Doyle Ellis Foster Grant Hughes Irving
"""
)

CITIES = [
    "Lisbon", "Madrid", "Paris", "Berlin", "Rome", "Vienna", "Prague", "Warsaw", "Oslo",
    "Stockholm", "Helsinki", "Copenhagen", "Dublin", "London", "Amsterdam", "Brussels", "Zurich",
    "Geneva", "Munich", "Hamburg", "Milan", "Naples", "Porto", "Seville", "Valencia", "Athens",
    "Budapest", "Bucharest", "Belgrade", "Zagreb", "Krakow", "Riga", "Tallinn", "Vilnius", "Toronto",
    "Chicago", "Boston", "Denver", "Seattle", "Austin", "Miami", "New York", "San Diego",
    "Mexico City", "Buenos Aires", "Lima", "Santiago", "Bogota", "Cairo", "Nairobi", "Lagos",
    "Cape Town", "Dubai", "Mumbai", "Delhi", "Bangkok", "Singapore", "Tokyo", "Osaka", "Seoul",
    "Sydney", "Melbourne", "Auckland", "Montreal", "Hong Kong", "Kyoto",
]  # fmt: skip

HELD_OUT_FIRST = 30
HELD_OUT_LAST = 30
HELD_OUT_CITIES = 12

# (singular, plural): irregular plurals are spelled out, so the model has to map them back.
ITEMS = [
    ("umbrella", "umbrellas"), ("lamp", "lamps"), ("chair", "chairs"), ("backpack", "backpacks"),
    ("mug", "mugs"), ("notebook", "notebooks"), ("pillow", "pillows"), ("towel", "towels"),
    ("blanket", "blankets"), ("jacket", "jackets"), ("scarf", "scarves"), ("shelf", "shelves"),
    ("knife", "knives"), ("box", "boxes"), ("watch", "watches"), ("dress", "dresses"),
    ("brush", "brushes"), ("glass", "glasses"), ("battery", "batteries"), ("candle", "candles"),
    ("bottle", "bottles"), ("helmet", "helmets"), ("bicycle", "bicycles"), ("kettle", "kettles"),
    ("teapot", "teapots"), ("basket", "baskets"), ("wallet", "wallets"), ("sweater", "sweaters"),
    ("hat", "hats"), ("glove", "gloves"), ("sock", "socks"), ("pen", "pens"), ("folder", "folders"),
    ("rug", "rugs"), ("vase", "vases"), ("clock", "clocks"), ("tent", "tents"),
    ("suitcase", "suitcases"), ("speaker", "speakers"), ("keyboard", "keyboards"),
]  # fmt: skip

COLORS = [
    "red", "blue", "green", "yellow", "black", "white", "gray", "orange", "purple", "pink",
    "brown", "beige", "navy", "silver", "gold",
]  # fmt: skip

MAX_QUANTITY = 20

# --- Sentence templates ---------------------------------------------------------------------
# {q} is the quantity in digits and {items} the item noun, singular when the quantity is 1 and
# plural otherwise ("1 blue umbrella", "3 blue umbrellas"). The templates vary the word order.

TEMPLATES = [
    "Please send {q} {color} {items} to {name} in {city}.",
    "{name} from {city} wants {q} {color} {items}.",
    "Ship {q} {color} {items} to {city}, attention {name}.",
    "New order: {q} {color} {items} for {name}, {city}.",
    "Could you deliver {q} {color} {items} to {name}? The address is in {city}.",
    "A customer in {city}, {name}, ordered {q} {color} {items}.",
    "I'd like {q} {color} {items} shipped to {city}. My name is {name}.",
    "Hi, this is {name} in {city}. Can I get {q} {color} {items}?",
    "Deliver to {name}, {city}: {q} {color} {items}.",
    "{name} needs {q} {items} in {color}, delivered to {city}.",
    "We need {q} {color} {items} at our {city} office. Contact: {name}.",
    "Send {name} in {city} {q} {color} {items}, please.",
    "Order {q} {color} {items} for {name}. Ship to {city}.",
    "From {city}: {name} is asking for {q} {items}, color {color}.",
    "{q} {color} {items} should go to {name} in {city}.",
    "Can {name} in {city} receive {q} {color} {items} by Friday?",
]


def split_vocab(values: list[str], held_out: int) -> tuple[list[str], list[str]]:
    """Split a list into (train values, test-only values): the last `held_out` go to test."""
    return values[:-held_out], values[-held_out:]


def make_example(rng: random.Random, firsts: list[str], lasts: list[str], cities: list[str]) -> dict:
    """Draw one order and render it with a random template; return the input and reference."""
    name = f"{rng.choice(firsts)} {rng.choice(lasts)}"
    city = rng.choice(cities)
    item, plural = rng.choice(ITEMS)
    color = rng.choice(COLORS)
    quantity = rng.randint(1, MAX_QUANTITY)
    sentence = rng.choice(TEMPLATES).format(
        name=name, city=city, color=color, q=quantity, items=item if quantity == 1 else plural
    )
    # Fixed key order; json.dumps default separators give the compact one-line form.
    target = {"name": name, "city": city, "item": item, "color": color, "quantity": quantity}
    return {"input": sentence, "output": json.dumps(target)}


def make_split(
    rng: random.Random, prefix: str, count: int, firsts: list[str], lasts: list[str], cities: list[str]
) -> list[dict]:
    """Generate `count` examples with distinct sentences, ids <prefix>-0001, <prefix>-0002, ..."""
    rows, seen = [], set()
    while len(rows) < count:
        ex = make_example(rng, firsts, lasts, cities)
        if ex["input"] in seen:  # never repeat a sentence within a split
            continue
        seen.add(ex["input"])
        rows.append({"id": f"{prefix}-{len(rows) + 1:04d}", "instruction": INSTRUCTION, **ex})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(out_dir: Path = OUT_DIR) -> None:
    # Sanity checks on the vocabularies: no duplicates, so the held-out values really are unseen.
    for vocab in (FIRST_NAMES, LAST_NAMES, CITIES, [s for s, _ in ITEMS], COLORS):
        assert len(vocab) == len(set(vocab)), "duplicate vocabulary entry"

    train_first, test_first = split_vocab(FIRST_NAMES, HELD_OUT_FIRST)
    train_last, test_last = split_vocab(LAST_NAMES, HELD_OUT_LAST)
    train_cities, test_cities = split_vocab(CITIES, HELD_OUT_CITIES)

    rng = random.Random(SEED)
    train = make_split(rng, "train", N_TRAIN, train_first, train_last, train_cities)
    test = make_split(rng, "test", N_TEST, test_first, test_last, test_cities)

    # Held-out names and cities guarantee that no test sentence occurs in train.
    assert not {r["input"] for r in train} & {r["input"] for r in test}

    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "test.jsonl", test)
    print(f"wrote {len(train)} examples to {out_dir / 'train.jsonl'}")
    print(f"wrote {len(test)} examples to {out_dir / 'test.jsonl'}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write the demo dataset (fixed seed).")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: data/demo)")
    main(parser.parse_args().out)
