"""Task rewards r(x, y) of a finished response, scored on its decoded text (host-side Python).

Both papers' rewards are weighted sums of named parts (METHOD.md):
  Pixel Reasoner   r(x, y) = R_ans ∈ {0, 1}: 1 for a correct final answer, else 0.
  Groundlight      R = w_ans·R_ans + w_fmt·R_fmt + w_tool·R_tool with R_ans = hard + soft,
                   final weights w_fmt = 0.1, w_tool = 0, hard 0.5 (VQA score), soft 0.5.
`REWARD_PARTS` holds every part by name (answer metrics, "correct", "format", "tool");
`REWARD_PRESETS` holds both papers' weights; `score_response` computes the weighted sum.
The curiosity bonus and the failed-last-operation rule act on r later, on device (rl.curiosity).

Protocols ("hermes" = Pixel Reasoner / Qwen function calls, "groundlight" = XML tags and YAML):
the final answer is the last complete `\\boxed{...}` (hermes) or the last `<answer>...</answer>`
(groundlight).
"""

import dataclasses
import functools
import json
import re
import types
from typing import Callable, Optional, Sequence

from pixel_jax.registry import Registry

# ------------------------------------------------------------------ answer extraction

_BOXED = "\\boxed{"
_BRACE_DEPTH = {"{": 1, "}": -1}


def extract_boxed(text: str) -> Optional[str]:
    """The content of the last complete top-level `\\boxed{...}` (nested braces kept), or None.

    Used for the hermes protocol's final answer; a `\\boxed{` left open (a truncated response)
    is no answer, so an earlier complete one wins.
    """
    answer = None
    start = text.find(_BOXED)
    while start != -1:
        begin = start + len(_BOXED)
        depth = 1
        for end in range(begin, len(text)):
            depth += _BRACE_DEPTH.get(text[end], 0)
            if depth == 0:
                break
        if depth:
            break
        answer = text[begin:end].strip()
        start = text.find(_BOXED, end + 1)
    return answer


def tag_blocks(text: str, tag: str) -> list[str]:
    """The contents of every complete `<tag>...</tag>` block, in order."""
    return re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)


ANSWER_EXTRACTORS: Registry[Callable[[str], Optional[str]]] = Registry("answer protocol")
ANSWER_EXTRACTORS.register("hermes")(extract_boxed)


@ANSWER_EXTRACTORS.register("groundlight")
def extract_answer_tag(text: str) -> Optional[str]:
    """The stripped content of the last `<answer>...</answer>` block, or None."""
    blocks = tag_blocks(text, "answer")
    return blocks[-1].strip() if blocks else None


# ------------------------------------------------------------------ VQA answer normalisation
# The official EvalAI answer processor (VQA / TextVQA evaluation): lower case, commas and '?'
# deleted (so "100,978" -> "100978"), "'s" split off, punctuation except apostrophe and colon
# deleted when it touches a space and replaced by a space otherwise, periods deleted unless a
# digit follows, number words -> digits, articles dropped, missing contraction apostrophes added.

_CONTRACTIONS = dict(pair.split("=") for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't
hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've
he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm
Ive=I've isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am
mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've mightve=might've
mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't
ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't shed've=she'd've
she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've
shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've
somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's someoned=someone'd
someoned've=someone'd've someone'dve=someone'd've someonell=someone'll someones=someone's
somethingd=something'd somethingd've=something'd've something'dve=something'd've
somethingll=something'll thats=that's thered=there'd thered've=there'd've
there'dve=there'd've therere=there're theres=there's theyd=they'd theyd've=they'd've
they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas wasnt=wasn't
wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're
whats=what's whatve=what've whens=when's whered=where'd wheres=where's whereve=where've
whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's whove=who've
whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
""".split())
_VQA_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                     "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


def normalize_vqa_answer(text: str) -> str:
    """An answer after the official EvalAI processing (applied to predictions and gold alike)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    spaced = text
    for mark in _PUNCTUATION:
        touches_space = mark + " " in spaced or " " + mark in spaced
        text = text.replace(mark, "" if touches_space else " ")
    text = _PERIOD_NOT_BEFORE_DIGIT.sub("", text)
    words = [_VQA_NUMBER_WORDS.get(word, word) for word in text.split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


# ------------------------------------------------------------------ answer metrics R_ans


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each cost 1)."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def normalized_levenshtein(a: str, b: str) -> float:
    """Levenshtein / max length, in [0, 1]; 0 for two empty strings."""
    longest = max(len(a), len(b))
    return levenshtein(a, b) / longest if longest else 0.0


def _require_gold(gold_answers: Sequence[str], minimum: int = 1) -> None:
    if isinstance(gold_answers, str) or len(gold_answers) < minimum:
        raise ValueError(f"gold_answers must be a sequence of at least {minimum} strings, "
                         f"got {gold_answers!r}")


def exact_match_score(answer: str, gold_answers: Sequence[str]) -> float:
    """R_ans ∈ {0, 1}: 1 if the VQA-normalised answer equals a VQA-normalised gold answer."""
    _require_gold(gold_answers)
    normalized = normalize_vqa_answer(answer)
    return float(any(normalize_vqa_answer(gold) == normalized for gold in gold_answers))


_OPTION_LETTER = re.compile(r"^\(?([A-Z])\)?(?=[.:)\s]|$)")


def _squash(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .:;,!?\"'()")


def multiple_choice_score(answer: str, gold_letter: str, options: Sequence[str]) -> float:
    """R_ans ∈ {0, 1} for a multiple-choice question (V* Bench, MVBench, HR-Bench).

    `options` are the option texts in letter order (A, B, ...). The answer picks an option by its
    full text (case, spacing and surrounding punctuation ignored) or by a leading letter:
    "B", "(B)", "B.", "B)", "B: text", "(B) text".
    """
    if not options:
        raise ValueError("options must list the option texts in letter order, got none")
    letters = [chr(ord("A") + i) for i in range(len(options))]
    if gold_letter not in letters:
        raise ValueError(f"gold_letter must be one of {letters}, got {gold_letter!r}")
    by_text = {_squash(option): letter for option, letter in zip(options, letters)}
    chosen = by_text.get(_squash(answer))
    if chosen is None:
        match = _OPTION_LETTER.match(answer.strip())
        chosen = match.group(1) if match else None
    return float(chosen == gold_letter)


_COUNT_WORDS = {word: value for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
_COUNT_WORDS["none"] = 0
_COUNT_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+")


def counting_score(answer: str, gold_count: int | str) -> float:
    """R_ans ∈ {0, 1} for counting (TallyQA): the one number the answer states equals the gold.

    Numbers are digits ("3", "1,000") or number words up to twenty ("three", "none"). An answer
    stating several different numbers ("2 or 3") or none scores 0.
    """
    try:
        gold = int(str(gold_count).strip())
    except ValueError:
        raise ValueError(f"gold_count must be an integer, got {gold_count!r}") from None
    text = re.sub(r"(?<=\d),(?=\d)", "", answer.lower())
    stated = {float(token) if token[0].isdigit() else _COUNT_WORDS[token]
              for token in _COUNT_TOKEN.findall(text)
              if token[0].isdigit() or token in _COUNT_WORDS}
    return float(stated == {gold})


def vqa_accuracy(answer: str, gold_answers: Sequence[str]) -> float:
    """The standard VQA accuracy (hard R_ans of Groundlight), in {0, .3, .6, .9, 1} for 10 golds.

    min(#matching annotators / 3, 1) averaged over the leave-one-out subsets of the annotators,
    after the official answer normalisation of prediction and gold answers.
    """
    _require_gold(gold_answers, minimum=2)
    normalized = normalize_vqa_answer(answer)
    hits = [normalize_vqa_answer(gold) == normalized for gold in gold_answers]
    return sum(min((sum(hits) - hit) / 3, 1.0) for hit in hits) / len(hits)


def vqa_soft_score(answer: str, gold_answers: Sequence[str], *, top_k: int = 3) -> float:
    """Groundlight's soft R_ans: Σ of the top_k best (1 − normalised Levenshtein) / top_k.

    Strings are VQA-normalised first; with fewer than top_k gold answers the sum is still divided
    by top_k (as in the reference), so a lone exact match scores 1/3.
    """
    _require_gold(gold_answers)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    normalized = normalize_vqa_answer(answer)
    similarities = sorted((1.0 - normalized_levenshtein(normalized, normalize_vqa_answer(gold))
                           for gold in gold_answers), reverse=True)
    return sum(similarities[:top_k]) / top_k


def anls(answer: str, gold_answers: Sequence[str], *, threshold: float = 0.5) -> float:
    """ANLS (InfographicsVQA): max over golds of (1 − NL if NL < τ else 0).

    NL = Levenshtein / max length (`normalized_levenshtein`).
    Case-insensitive, whitespace-normalised; τ = `threshold` (0.5 in the benchmark).
    """
    _require_gold(gold_answers)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    squashed = " ".join(answer.lower().split())
    distances = (normalized_levenshtein(squashed, " ".join(gold.lower().split()))
                 for gold in gold_answers)
    return max(1.0 - d if d < threshold else 0.0 for d in distances)


# ------------------------------------------------------------------ format score R_fmt
# Graded in [0, 1] per protocol from the assistant turns (decoded text of each turn, in order).
#
# groundlight (as the reference): each assistant turn scores 0.4 if it has exactly one
#   <think>...</think> block and exactly one action, a <tool>...</tool> or an <answer>...</answer>
#   block; + 0.2 if it starts with <think>; + 0.2 if it ends with the closing tag of its action;
#   + 0.2 if the action's payload is well formed (the tool body is YAML `key: value` lines with a
#   `name` key; the answer is not empty). R_fmt is the mean over turns.
# hermes: R_fmt = 0.5 · (well-formed calls / opened `<tool_call>` tags, 1 with no call)
#   + 0.5 · [the last turn has a non-empty final \boxed{} after its last `<tool_call>`]. A call is
#   well formed when its tag is closed and its body is a JSON object with a string "name" and an
#   object "arguments".

FORMAT_GRADERS: Registry[Callable[[Sequence[str]], float]] = Registry("format protocol")
_YAML_LINE = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*:\s*\S")


def _is_yaml_call(body: str) -> bool:
    lines = [line for line in body.splitlines() if line.strip()]
    keys = [match.group(1) for match in map(_YAML_LINE.match, lines) if match]
    return len(keys) == len(lines) and "name" in keys


def _is_json_call(body: str) -> bool:
    try:
        call = json.loads(body)
    except json.JSONDecodeError:
        return False
    return (isinstance(call, dict) and isinstance(call.get("name"), str)
            and isinstance(call.get("arguments"), dict))


def _grade_groundlight_turn(turn: str) -> float:
    tools, answers = tag_blocks(turn, "tool"), tag_blocks(turn, "answer")
    one_action = len(tools) + len(answers) == 1
    stripped = turn.strip()
    closing = "</tool>" if tools else "</answer>"
    payload_ok = one_action and (_is_yaml_call(tools[0]) if tools else bool(answers[0].strip()))
    return (0.4 * (len(tag_blocks(turn, "think")) == 1 and one_action)
            + 0.2 * stripped.startswith("<think>")
            + 0.2 * (one_action and stripped.endswith(closing))
            + 0.2 * payload_ok)


@FORMAT_GRADERS.register("groundlight")
def _grade_groundlight(turns: Sequence[str]) -> float:
    return sum(map(_grade_groundlight_turn, turns)) / len(turns)


@FORMAT_GRADERS.register("hermes")
def _grade_hermes(turns: Sequence[str]) -> float:
    opened = sum(turn.count("<tool_call>") for turn in turns)
    bodies = [body for turn in turns for body in tag_blocks(turn, "tool_call")]
    well_formed = sum(map(_is_json_call, bodies))
    call_quality = well_formed / opened if opened else 1.0
    after_last_call = turns[-1].rsplit("</tool_call>", 1)[-1]
    has_final_answer = "<tool_call>" not in after_last_call and bool(extract_boxed(after_last_call))
    return 0.5 * call_quality + 0.5 * has_final_answer


def format_score(turns: Sequence[str], protocol: str) -> float:
    """R_fmt ∈ [0, 1]: the graded format score of a response's assistant turns (rubric above)."""
    if isinstance(turns, str) or not turns:
        raise ValueError(f"turns must be a non-empty sequence of assistant turns, got {turns!r}")
    return FORMAT_GRADERS.get(protocol)(turns)


def tool_use_score(n_attempted: int, n_failed: int, *, no_call_value: float = 0.0) -> float:
    """R_tool = successful calls / attempted calls; `no_call_value` (Groundlight: 0) if none."""
    if not 0 <= n_failed <= n_attempted:
        raise ValueError(f"need 0 <= n_failed <= n_attempted, got n_failed={n_failed}, "
                         f"n_attempted={n_attempted}")
    return (n_attempted - n_failed) / n_attempted if n_attempted else no_call_value


# ------------------------------------------------------------------ parts, weights, presets


@dataclasses.dataclass(frozen=True)
class Response:
    """What the reward parts read from one finished response y to a query x."""

    turns: tuple[str, ...]  # decoded assistant turns, in order
    protocol: str  # "hermes" | "groundlight": answer extraction and format rubric
    gold_answers: tuple[str, ...]  # annotators' answers; a letter for multiple choice
    answer_metric: str = "exact_match"  # the part that "correct" uses for this example
    options: tuple[str, ...] = ()  # multiple-choice option texts, letter order
    n_calls: int = 0  # tool calls attempted
    n_failed_calls: int = 0  # of which the environment rejected (Execution error)


REWARD_PARTS: Registry[Callable[[Response], float]] = Registry("reward part")

# R_ans metrics, scored on the final answer extracted per protocol (0 without an answer).
_ANSWER_METRICS: dict[str, Callable[[str, Response], float]] = {
    "exact_match": lambda answer, r: exact_match_score(answer, r.gold_answers),
    "multiple_choice": lambda answer, r: multiple_choice_score(answer, r.gold_answers[0],
                                                               r.options),
    "counting": lambda answer, r: counting_score(answer, r.gold_answers[0]),
    "vqa": lambda answer, r: vqa_accuracy(answer, r.gold_answers),  # Groundlight's hard part
    "vqa_soft": lambda answer, r: vqa_soft_score(answer, r.gold_answers),  # ... and soft part
    "anls": lambda answer, r: anls(answer, r.gold_answers),
}


def _answer_part(response: Response, metric: Callable[[str, Response], float]) -> float:
    answer = ANSWER_EXTRACTORS.get(response.protocol)(response.turns[-1])
    return 0.0 if answer is None else metric(answer, response)


for _name, _metric in _ANSWER_METRICS.items():
    REWARD_PARTS.register(_name)(functools.partial(_answer_part, metric=_metric))
del _name, _metric


@REWARD_PARTS.register("correct")
def _correct_part(r: Response) -> float:
    """R_ans with the example's own metric (`Response.answer_metric`)."""
    if r.answer_metric == "correct":
        raise ValueError("answer_metric must name a metric part, not 'correct'")
    return REWARD_PARTS.get(r.answer_metric)(r)


REWARD_PARTS.register("format")(lambda r: format_score(r.turns, r.protocol))
REWARD_PARTS.register("tool")(lambda r: tool_use_score(r.n_calls, r.n_failed_calls))

REWARD_PRESETS: Registry[types.MappingProxyType] = Registry("reward preset")
# Pixel Reasoner: r(x, y) = 1 for a correct final answer, else 0.
REWARD_PRESETS.register("pixel_reasoner")(types.MappingProxyType({"correct": 1.0}))
# Groundlight (final paper weights): 0.1·R_fmt + 0·R_tool + 0.5·hard + 0.5·soft.
REWARD_PRESETS.register("groundlight")(types.MappingProxyType(
    {"format": 0.1, "tool": 0.0, "vqa": 0.5, "vqa_soft": 0.5}))


def combine_rewards(parts: dict[str, float], weights: dict[str, float]) -> float:
    """r(x, y) = Σ_k w_k · part_k, e.g. R = w_ans·R_ans + w_fmt·R_fmt + w_tool·R_tool.

    Every weighted name must be in `parts`; parts without a weight are ignored.
    """
    missing = sorted(set(weights) - set(parts))
    if missing:
        raise ValueError(f"weights name parts {missing} that are not in parts {sorted(parts)}")
    return float(sum(weight * parts[name] for name, weight in weights.items()))


def score_response(response: Response, weights: dict[str, float]) -> tuple[float, dict[str, float]]:
    """r(x, y) of one response under `weights` (a preset or a config dict), and its parts."""
    parts = {name: float(REWARD_PARTS.get(name)(response)) for name in weights}
    return combine_rewards(parts, weights), parts
