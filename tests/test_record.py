"""The run record: summary.json read and written through one class, strict JSON, and the status
and outcome words as types that stay plain words in JSON and W&B."""

from __future__ import annotations

import json
import math

import pytest
import wandb.util

from gan import record
from gan.record import FINAL, Ending, NotASummary, Outcome, Status, Summary


def test_a_summary_is_written_as_strict_json_and_read_back(tmp_path):
    summary = {"status": Status.diverged, "final": {"train/loss_D": math.nan}, "best": -math.inf}
    Summary(tmp_path).write(summary)
    text = (tmp_path / record.SUMMARY_FILE).read_text()
    assert json.loads(text, parse_constant=pytest.fail) == {
        "status": "diverged",
        "final": {"train/loss_D": "NaN"},
        "best": "-Infinity",
    }
    assert text.endswith("}\n") and '\n  "status"' in text  # indented, one trailing newline
    assert Summary(tmp_path).final_status() is Status.diverged


@pytest.mark.parametrize(
    ("content", "raises"),
    [(None, FileNotFoundError), (b"\xff{", ValueError), (b"[1, 2]", NotASummary)],
)
def test_a_missing_or_damaged_summary_reads_as_none(tmp_path, content, raises):
    if content is not None:
        (tmp_path / record.SUMMARY_FILE).write_bytes(content)
    with pytest.raises(raises):
        Summary(tmp_path).load()
    assert Summary(tmp_path).read() == {}
    assert Summary(tmp_path).final_status() is None


@pytest.mark.parametrize("status", ["running", "preempted", "failed", "invalid", ["finished"]])
def test_only_finished_and_diverged_runs_have_ended(tmp_path, status):
    Summary(tmp_path).write({"status": status})
    assert Summary(tmp_path).final_status() is None
    assert FINAL == ("finished", "diverged")


def test_a_stopped_loop_leaves_a_preempted_run():
    assert {e: record.status_of(e) for e in ("finished", "diverged", "stopped")} == {
        "finished": "finished",
        "diverged": "diverged",
        "stopped": "preempted",
    }
    assert set(record.STATUS_OF_ENDING) == set(Ending)


@pytest.mark.parametrize("word", [*Status, *Outcome, *Ending], ids=str)
def test_every_word_stays_a_plain_word_in_json_f_strings_and_wandb(word):
    assert word.name == word.value  # W&B records an Enum by its name
    assert wandb.util.json_friendly(word)[0] == word.value
    assert json.dumps(word) == f'"{word.value}"' and f"{word:<3}" == f"{word.value:<3}"
    assert {word: 1}[word.value] == 1


def test_the_status_words_are_unchanged():
    expected = ("running", "finished", "diverged", "preempted", "failed", "invalid")
    assert tuple(Status) == expected
