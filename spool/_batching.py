"""Cutting a claimed segment into request bodies: each line checked, ranges within the limits.

No network and no state here: a ``Prepared`` segment is what the delivery sends.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from spool import record, store
from spool.upload import ENVELOPE_BYTES, MAX_BATCH_EVENTS, MAX_BODY_BYTES, Body


class Item:
    """One line of a segment and what to do with it."""

    __slots__ = ("line", "probed", "reason", "too_old", "valid")

    def __init__(self, line: store.Line, valid: bool, reason: str = "", too_old: bool = False):
        self.line = line
        self.valid = valid
        self.reason = reason  # why it is quarantined (unreadable) or dropped (too old)
        self.too_old = too_old
        self.probed = False  # acknowledged already, sent alone as a probe (_delivery._probe)


@dataclass
class Prepared:
    """A segment ready to send: claimed, read, checked, cut, and compressed."""

    claim: store.Claim
    batches: list[tuple[list[Item] | None, Body]]  # None: the whole segment, all valid


@dataclass(frozen=True)
class Checker:
    """Decides what each line is, against the run's age limit (``store.too_old_limit``)."""

    too_old_before: float = float("-inf")

    @property
    def oldest_stamp(self) -> bytes:
        """The age limit as a record's timestamp text; ``b""`` when nothing is too old."""
        limit = self.too_old_before
        return b"" if limit == float("-inf") else record.iso_timestamp(limit).encode()

    def parse(self, line: store.Line, oldest_stamp: bytes) -> Item:
        """Decide what one spooled line is: a record to send, unreadable, or too old.

        Too old needs evidence: a stamp from an unset clock (before 2020) is none.
        """
        stamp = record.canonical_timestamp(line.raw)
        if stamp is not None:  # the fast path: fixed-width timestamps compare as text
            return (
                Item(line, False, "too_old", too_old=True)
                if stamp < oldest_stamp and stamp >= _EVIDENCE_STAMP
                else Item(line, True)
            )
        message, problem = record.check_line(line.raw)
        if message is None:
            return Item(line, False, problem)
        when = record.parse_timestamp(message["timestamp"])
        if when < self.too_old_before and store.is_evidence(when):
            return Item(line, False, "too_old", too_old=True)
        return Item(line, True)

    def items(self, claim: store.Claim) -> list[Item]:
        """Each line of a claimed segment's pending bytes, checked one by one."""
        oldest_stamp = self.oldest_stamp
        items = [
            self.parse(line, oldest_stamp) for line in store.split_lines(claim.data, claim.cursor)
        ]
        if items and items[-1].line.end < claim.size:
            # Trailing blank lines belong to the last range, so the segment is consumed whole.
            last = items[-1]
            items[-1] = Item(
                store.Line(last.line.start, claim.size, last.line.raw),
                last.valid,
                last.reason,
                last.too_old,
            )
        return items

    def prepare(self, claim: store.Claim, gzip: bool, pool: Executor | None = None) -> Prepared:
        """Cut a claimed segment into bodies; the claim is released if this fails.

        ``pool``: where the bodies are compressed (see ``upload.Body``).
        """
        try:
            data = claim.data
            count = data.count(b"\n")
            if (
                count <= MAX_BATCH_EVENTS
                and ENVELOPE_BYTES + len(data) - 1 <= MAX_BODY_BYTES
                and record.canonical_block_since(data, count, self.oldest_stamp)
            ):
                # The common case: lines append wrote, none too old, one batch. Joined in
                # one pass and one copy (a view drops the last comma), with no object per
                # line (a split on 400 makes them after all).
                joined = memoryview(data.replace(b"\n", b","))[:-1]
                body = Body((), gzip, joined=joined, count=count, pool=pool)
                return Prepared(claim, [(None, body)])
            return Prepared(
                claim,
                [
                    (batch, Body([it.line.raw for it in batch if it.valid], gzip, pool=pool))
                    for batch in batches(self.items(claim))
                ],
            )
        except BaseException:
            claim.release()
            raise


_EVIDENCE_STAMP = record.iso_timestamp(store.UNSET_CLOCK_BEFORE).encode()


def batches(items: list[Item]) -> list[list[Item]]:
    """Cut a segment's items into ranges within Segment's count and byte limits."""
    out: list[list[Item]] = []
    current: list[Item] = []
    count = 0
    size = ENVELOPE_BYTES
    for item in items:
        if item.valid:
            extra = len(item.line.raw) + (1 if count else 0)
            if count and (count + 1 > MAX_BATCH_EVENTS or size + extra > MAX_BODY_BYTES):
                out.append(current)
                current, count, size = [], 0, ENVELOPE_BYTES
                extra = len(item.line.raw)
            count += 1
            size += extra
        current.append(item)
    if current:
        out.append(current)
    return out


NEWEST_SEARCH_BYTES = 1024 * 1024
"""How far back ``newest_stamp`` looks for a readable record, over all segments."""


def newest_stamp(directory: Path, names: list[str]) -> float | None:
    """When the spool's newest readable record was stamped; None when none is within reach.

    Searched backwards from the end of the newest segment, then the one before, so an
    unreadable, torn or blank tail (which the run quarantines) does not hide the clock
    the spool last saw. At most ``NEWEST_SEARCH_BYTES`` are read: a spool ending in more
    garbage than that has no newest stamp this run, and then nothing is dropped as too
    old (``store.too_old_limit``), so bounding the search never costs an event.
    """
    budget = NEWEST_SEARCH_BYTES
    for name in reversed(names):
        stamp, used = store.find_from_end(directory / name, _stamp_of, budget, _KEY)
        if stamp is not None:
            return stamp
        budget -= used
        if budget <= 0:
            break
    return None


# Only a line holding it can be a record (a cheap scan past a long run of garbage). A
# record spelling the key with escapes is passed over: an older stamp, or none, drops less.
_KEY = b'"timestamp"'


def _stamp_of(raw: bytes) -> float | None:
    message, _problem = record.check_line(raw)
    return record.parse_timestamp(message["timestamp"]) if message is not None else None
