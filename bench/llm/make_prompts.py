"""Writes bench/llm/prompts.json: the prompts every engine in the LLM benchmark reads.

Texts are rendered once with SmolLM2's own chat template (HF transformers apply_chat_template on
the GGUF), so the peers and our engine tokenize exactly the same strings.
    python make_prompts.py <SmolLM2-135M-Instruct.Q4_1.gguf> prompts.json
"""
import json
import os
import random
import sys

from transformers import AutoTokenizer

model_path = os.path.abspath(sys.argv[1])
folder, file_name = os.path.split(model_path)
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
rng = random.Random(7)

MOVIES = [
    ("Heat", 1995, "Crime|Thriller"), ("Toy Story", 1995, "Animation|Children|Comedy"),
    ("Alien", 1979, "Horror|Sci-Fi"), ("Amelie", 2001, "Comedy|Romance"),
    ("The Matrix", 1999, "Action|Sci-Fi"), ("Fargo", 1996, "Comedy|Crime|Drama"),
    ("Spirited Away", 2001, "Adventure|Animation|Fantasy"), ("Casablanca", 1942, "Drama|Romance"),
    ("Jaws", 1975, "Action|Horror"), ("Clueless", 1995, "Comedy|Romance"),
    ("Seven", 1995, "Mystery|Thriller"), ("The Big Lebowski", 1998, "Comedy|Crime"),
    ("Titanic", 1997, "Drama|Romance"), ("Blade Runner", 1982, "Action|Sci-Fi|Thriller"),
    ("Groundhog Day", 1993, "Comedy|Fantasy|Romance"), ("Goodfellas", 1990, "Crime|Drama"),
    ("Mulan", 1998, "Adventure|Animation|Children"), ("Psycho", 1960, "Crime|Horror"),
    ("Notting Hill", 1999, "Comedy|Romance"), ("Apollo 13", 1995, "Adventure|Drama|IMAX"),
    ("The Shining", 1980, "Horror"), ("Babe", 1995, "Children|Drama"),
    ("Braveheart", 1995, "Action|Drama|War"), ("Contact", 1997, "Drama|Sci-Fi"),
]
SYSTEM = (
    "You are simulating one real user of a movie recommender. Read the user's profile and "
    "recent history, think in the first person about the options, then choose exactly one. "
    "End with 'Behavior: [X]' where X is the option letter."
)


def rationale(target_tokens):
    clauses = [
        "I notice that my recent ratings lean towards films with strong characters",
        "the last thriller I watched kept me on the edge of my seat",
        "I am in the mood for something lighter after a long week at work",
        "option B looks like a family film, which is not what I usually pick",
        "I rated two science fiction films highly, so option C fits my taste",
        "I have heard good things about the director of option A",
        "a romance could be nice, but I watched one yesterday",
        "the release year matters less to me than the genre",
        "I usually avoid horror late at night",
        "my friends keep recommending the crime drama",
        "animation can be surprisingly deep and I enjoyed the last one",
        "I want something I can talk about with colleagues tomorrow",
    ]
    text = "Thought: "
    while len(tokenizer.encode(text, add_special_tokens=False)) < target_tokens - 12:
        text += rng.choice(clauses).capitalize() + ", and " + rng.choice(clauses) + ". "
    return text.rstrip() + "\nBehavior: ["


def render(messages, add_generation_prompt=True):
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def token_count(text):
    return len(tokenizer.encode(text, add_special_tokens=False))


# The scene prompt: a system message and a long user message (profile, history, 10 options).
long_history = "\n".join(
    f"- {title} ({year}) [{genres}] rated {rng.choice([2, 3, 4, 5])}/5: "
    + rng.choice(["loved the pacing and the music", "too slow for me, but the ending was good",
                  "great characters and a clever plot", "watched it twice with my sister",
                  "fell asleep halfway through", "fun with friends on a Friday night"])
    for title, year, genres in MOVIES * 2
)
options = "\n".join(f"[{chr(65 + i)}] {t} ({y}) [{g}]" for i, (t, y, g) in enumerate(rng.sample(MOVIES, 10)))
user = ("Profile: age 25-34, occupation programmer, gender F.\n\nRecent history (oldest first):\n"
        + long_history + "\n\nOptions:\n" + options
        + "\n\nWhich one do you watch next? Think it through, then answer.")
lines = user.split("\n")
while token_count(render([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}])) > 600:
    del lines[3]  # drop the oldest history entry until the prompt is ~600 tokens
scene_messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]
scene_prompt = render(scene_messages)

continuations = [rationale(150) for _ in range(10)]
decode_texts = [
    render([{"role": "user", "content": question}])
    for question in [
        "Write a short story about a lighthouse keeper.", "Explain how rain forms.",
        "Describe your favourite movie scene.", "Give me advice for a job interview.",
        "What makes a good cup of coffee?", "Tell me about the history of trains.",
        "Why do cats purr?", "Plan a weekend trip to the mountains.",
    ]
]

prompts = {
    "model_file": file_name,
    "prefill_text": scene_prompt,
    "prefill_tokens": token_count(scene_prompt),
    "decode_texts": decode_texts,
    "decode_new_tokens": 64,
    "scene": {
        "messages": scene_messages,
        "prompt_text": scene_prompt,
        "continuations": continuations,
        "continuation_tokens": [token_count(c) for c in continuations],
        "labels": [chr(65 + i) for i in range(10)],
    },
}
with open(sys.argv[2], "w", encoding="utf-8") as handle:
    json.dump(prompts, handle, ensure_ascii=False, indent=1)
    handle.write("\n")
print("prefill tokens", prompts["prefill_tokens"], "continuation tokens", prompts["scene"]["continuation_tokens"])
