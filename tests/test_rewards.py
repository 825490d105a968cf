"""pixel_jax.rl.rewards: answer extraction, metrics, format and tool scores, presets."""

import pytest

from pixel_jax.rl import rewards as R

# ------------------------------------------------------------------ extraction


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{42}", "42"),
    (r"\boxed{\frac{1}{2}} is the answer", r"\frac{1}{2}"),
    (r"first \boxed{A} then \boxed{ B }", "B"),  # last boxed wins, stripped
    (r"\boxed{x} and a truncated \boxed{y", "x"),  # an unclosed box is no answer
    (r"\boxed{outer \boxed{inner}}", r"outer \boxed{inner}"),  # top level only
    ("no answer here", None),
    (r"\boxed{", None),
])
def test_extract_boxed(text, expected):
    assert R.extract_boxed(text) == expected


def test_extract_answer_tag_takes_the_last_block():
    text = "<think>hm</think><answer> first </answer> then <answer>\nsecond\n</answer>"
    assert R.extract_answer_tag(text) == "second"
    assert R.extract_answer_tag("<answer>unclosed") is None
    assert R.ANSWER_EXTRACTORS.get("hermes") is R.extract_boxed


# ------------------------------------------------------------------ VQA normalisation
# Examples from the official evaluation page (visualqa.org/evaluation.html) and its processor.


@pytest.mark.parametrize("raw, normalized", [
    ("dont", "don't"),  # missing contraction apostrophe added
    ("Yes", "yes"),  # lower case
    ("yes.", "yes"),  # periods removed ...
    ("3.5", "3.5"),  # ... except as a decimal point
    ("two", "2"),  # number words to digits
    ("none", "0"),
    ("a dog", "dog"),  # articles removed
    ("The Eiffel tower", "eiffel tower"),
    ("2:50 pm", "2:50 pm"),  # colons kept (time)
    ("100,978", "100978"),  # no space for a comma between digits
    ("hello-world", "hello world"),  # punctuation inside a word -> space
    ("red / blue", "red blue"),  # punctuation next to a space -> removed
    ("yes!\n", "yes"),
])
def test_normalize_vqa_answer_official_examples(raw, normalized):
    assert R.normalize_vqa_answer(raw) == normalized


def test_normalization_keeps_possessives_apart_from_plurals():
    # "We do not remove apostrophe because it can incorrectly change possessives to plural".
    assert R.normalize_vqa_answer("girl's") != R.normalize_vqa_answer("girls")
    assert R.normalize_vqa_answer("Girl's") == R.normalize_vqa_answer("girl's")


# ------------------------------------------------------------------ VQA accuracy


@pytest.mark.parametrize("n_matching, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9),
                                                  (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out(n_matching, expected):
    # 10 annotators, n of them gave the answer: mean over the 10 subsets of 9 of min(#match/3, 1),
    # e.g. 3 matching: 3 subsets see 2 (2/3), 7 see 3 (1) -> (2 + 7) / 10 = 0.9.
    gold = ["cat"] * n_matching + ["dog"] * (10 - n_matching)
    assert R.vqa_accuracy("cat", gold) == pytest.approx(expected)


def test_vqa_accuracy_normalises_both_sides():
    gold = ["2", "two", "Two.", "3", "3", "3", "3", "3", "3", "3"]
    assert R.vqa_accuracy("two", gold) == pytest.approx(0.9)
    assert R.vqa_accuracy("The number 2", gold) == 0.0


def test_vqa_accuracy_needs_annotators():
    with pytest.raises(ValueError, match="gold_answers must be a sequence of at least 2"):
        R.vqa_accuracy("cat", ["cat"])
    with pytest.raises(ValueError, match="gold_answers"):
        R.vqa_accuracy("cat", "cat")


# ------------------------------------------------------------------ edit-distance scores


@pytest.mark.parametrize("a, b, distance", [("kitten", "sitting", 3), ("flaw", "lawn", 2),
                                            ("", "abc", 3), ("abc", "", 3), ("same", "same", 0)])
def test_levenshtein(a, b, distance):
    assert R.levenshtein(a, b) == distance
    assert R.levenshtein(b, a) == distance


def test_vqa_soft_score_mean_of_three_best():
    # similarities to "cat": 1, 1, "car" 1 - 1/3, "dog" 0 -> (1 + 1 + 2/3) / 3.
    gold = ["cat", "Cat", "car", "dog"]
    assert R.vqa_soft_score("cat", gold) == pytest.approx(8 / 9)
    # "cats" vs "cat": 1 - 1/4 = 0.75 for the two cats, "car" 1 - 2/4 = 0.5.
    assert R.vqa_soft_score("cats", gold) == pytest.approx((0.75 + 0.75 + 0.5) / 3)
    assert R.vqa_soft_score("cat", ["cat"]) == pytest.approx(1 / 3)  # still divided by 3
    assert R.vqa_soft_score("cat", ["cat", "dog"], top_k=1) == 1.0


def test_anls():
    assert R.anls("Hello  World", ["hello world"]) == 1.0  # case and whitespace ignored
    assert R.anls("hello wrld", ["hello world"]) == pytest.approx(1 - 1 / 11)
    assert R.anls("ax", ["ab"]) == 0.0  # NL = 0.5 is not < τ = 0.5
    assert R.anls("abc", ["abd"]) == pytest.approx(2 / 3)
    assert R.anls("abc", ["xyz", "abd", "abc"]) == 1.0  # best over gold answers
    assert R.anls("ax", ["ab"], threshold=0.6) == 0.5
    with pytest.raises(ValueError, match="threshold"):
        R.anls("a", ["a"], threshold=0.0)


# ------------------------------------------------------------------ exact, choice, counting


def test_exact_match_score():
    assert R.exact_match_score("The Red car.", ["red car"]) == 1.0
    assert R.exact_match_score("blue car", ["red car", "Blue  car"]) == 1.0
    assert R.exact_match_score("red", ["red car"]) == 0.0


OPTIONS = ("The red one", "The blue one", "A cat", "green")


@pytest.mark.parametrize("answer, gold, expected", [
    ("B", "B", 1.0), ("(B)", "B", 1.0), ("B.", "B", 1.0), ("B)", "B", 1.0),
    ("(B) The blue one", "B", 1.0), ("B: blue", "B", 1.0),
    ("the BLUE one.", "B", 1.0),  # option text, case and punctuation ignored
    ("A cat", "C", 1.0),  # an option's text beats a leading letter
    ("A", "B", 0.0), ("blue", "B", 0.0), ("Both", "B", 0.0), ("E", "B", 0.0),
])
def test_multiple_choice_score(answer, gold, expected):
    assert R.multiple_choice_score(answer, gold, OPTIONS) == expected


def test_multiple_choice_validates_gold_and_options():
    with pytest.raises(ValueError, match="gold_letter must be one of"):
        R.multiple_choice_score("A", "E", OPTIONS)
    with pytest.raises(ValueError, match="options"):
        R.multiple_choice_score("A", "A", ())


@pytest.mark.parametrize("answer, gold, expected", [
    ("3", 3, 1.0), ("three", 3, 1.0), ("There are 3 cars.", "3", 1.0), ("Three apples", 3, 1.0),
    ("none", 0, 1.0), ("1,000", 1000, 1.0), ("twelve", 12, 1.0),
    ("2 or 3", 3, 0.0),  # several numbers: no credit for hedging
    ("3 or three", 3, 1.0), ("2.5", 2, 0.0), ("4", 3, 0.0), ("many", 3, 0.0),
])
def test_counting_score(answer, gold, expected):
    assert R.counting_score(answer, gold) == expected


def test_counting_score_rejects_non_integer_gold():
    with pytest.raises(ValueError, match="gold_count must be an integer"):
        R.counting_score("3", "three")


# ------------------------------------------------------------------ format and tool scores

GOOD_TOOL_TURN = "<think>look closer</think>\n<tool>\nname: zoom\nkeypoint: [10, 20]\n</tool>"
GOOD_ANSWER_TURN = "<think>I see it</think>\n<answer>stop</answer>"


@pytest.mark.parametrize("turns, expected", [
    ([GOOD_TOOL_TURN, GOOD_ANSWER_TURN], 1.0),
    # no think: structure 0, start 0, end 0.2, payload 0.2
    (["<tool>\nname: zoom\nkeypoint: [1, 2]\n</tool>"], 0.4),
    # tool body without a name: 0.4 + 0.2 + 0.2, payload 0
    (["<think>x</think><tool>keypoint: [1, 2]</tool>"], 0.8),
    # empty answer: payload 0
    (["<think>x</think><answer> </answer>"], 0.8),
    # tool and answer in one turn: only the start counts
    (["<think>x</think><tool>name: zoom</tool><answer>a</answer>"], 0.2),
    # trailing text after the answer: no valid end
    (["<think>x</think><answer>a</answer> bye"], 0.8),
    # mean over turns
    ([GOOD_ANSWER_TURN, "plain text"], 0.5),
])
def test_groundlight_format_score(turns, expected):
    assert R.format_score(turns, "groundlight") == pytest.approx(expected)


CALL = ('<tool_call>\n{"name": "crop_image", '
        '"arguments": {"bbox_2d": [0, 0, 1, 1], "target_image": 1}}\n</tool_call>')


@pytest.mark.parametrize("turns, expected", [
    ([f"zoom in {CALL}", r"the crop shows it: \boxed{B}"], 1.0),
    ([r"text only \boxed{B}"], 1.0),  # no call: call quality 1
    ([r"text only, no answer"], 0.5),
    (['<tool_call>{"name": "crop_image"}</tool_call>', r"\boxed{B}"], 0.5),  # no arguments
    (["<tool_call>not json</tool_call>", r"\boxed{B}"], 0.5),
    ([CALL, "<tool_call>{bad</tool_call>", r"\boxed{B}"], 0.75),  # 1 of 2 well formed
    ([CALL, "<tool_call>{truncated", r"\boxed{B}"], 0.75),  # an unclosed call is malformed
    ([CALL, r"\boxed{B} " + CALL], 0.5),  # a call after the answer: no final answer
    ([CALL, r"\boxed{}"], 0.5),  # empty answer
])
def test_hermes_format_score(turns, expected):
    assert R.format_score(turns, "hermes") == pytest.approx(expected)


def test_format_score_errors():
    message = "unknown format protocol 'xml'; known: 'groundlight', 'hermes'"
    with pytest.raises(ValueError, match=message):
        R.format_score(["x"], "xml")
    with pytest.raises(ValueError, match="turns must be a non-empty sequence"):
        R.format_score("a single string", "hermes")


def test_tool_use_score():
    assert R.tool_use_score(3, 1) == pytest.approx(2 / 3)
    assert R.tool_use_score(2, 0) == 1.0
    assert R.tool_use_score(0, 0) == 0.0
    assert R.tool_use_score(0, 0, no_call_value=1.0) == 1.0
    with pytest.raises(ValueError, match="n_failed <= n_attempted"):
        R.tool_use_score(1, 2)


# ------------------------------------------------------------------ combination and presets


def test_combine_rewards():
    parts = {"format": 0.5, "tool": 1.0, "vqa": 0.9, "vqa_soft": 0.8}
    assert R.combine_rewards(parts, {"format": 0.1, "vqa": 0.5}) == pytest.approx(0.05 + 0.45)
    with pytest.raises(ValueError, match=r"weights name parts \['anls'\]"):
        R.combine_rewards(parts, {"anls": 1.0})


def test_pixel_reasoner_preset_is_one_for_a_correct_answer():
    weights = R.REWARD_PRESETS.get("pixel_reasoner")
    right = R.Response(turns=(f"zoom {CALL}", r"It is blue. \boxed{(B)}"), protocol="hermes",
                       gold_answers=("B",), answer_metric="multiple_choice", options=OPTIONS)
    wrong = R.Response(turns=(r"\boxed{A}",), protocol="hermes", gold_answers=("B",),
                       answer_metric="multiple_choice", options=OPTIONS)
    unanswered = R.Response(turns=("I give up",), protocol="hermes", gold_answers=("3",),
                            answer_metric="counting")
    assert R.score_response(right, weights) == (1.0, {"correct": 1.0})
    assert R.score_response(wrong, weights)[0] == 0.0
    assert R.score_response(unanswered, weights)[0] == 0.0


def test_groundlight_preset_weights_format_hard_and_soft():
    weights = R.REWARD_PRESETS.get("groundlight")
    assert dict(weights) == {"format": 0.1, "tool": 0.0, "vqa": 0.5, "vqa_soft": 0.5}
    gold = ("stop",) * 3 + ("stops",) * 7
    response = R.Response(turns=(GOOD_TOOL_TURN, GOOD_ANSWER_TURN), protocol="groundlight",
                          gold_answers=gold, n_calls=1, n_failed_calls=1)
    total, parts = R.score_response(response, weights)
    # hard: 3 annotators match -> 0.9; soft: three exact matches -> 1; format 1; tool 0/1 = 0.
    assert parts == pytest.approx({"format": 1.0, "tool": 0.0, "vqa": 0.9, "vqa_soft": 1.0})
    assert total == pytest.approx(0.1 + 0.45 + 0.5)


def test_correct_part_uses_the_example_metric():
    anls_response = R.Response(turns=(r"\boxed{hello wrld}",), protocol="hermes",
                               gold_answers=("hello world",), answer_metric="anls")
    assert R.REWARD_PARTS.get("correct")(anls_response) == pytest.approx(1 - 1 / 11)
    looping = R.Response(turns=(r"\boxed{x}",), protocol="hermes", gold_answers=("x",),
                         answer_metric="correct")
    with pytest.raises(ValueError, match="answer_metric must name a metric part"):
        R.REWARD_PARTS.get("correct")(looping)
    with pytest.raises(ValueError, match="unknown reward part 'accuracy'"):
        R.score_response(anls_response, {"accuracy": 1.0})
