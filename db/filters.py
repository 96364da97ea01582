"""One clause builder for every filtered read of generations: the review queue, browse, export, training.

Those four narrow the same generations by the same fields, over different joins: the review queue
reads `generations` alone (so its next item stays one index seek), browse joins the instruction and
the run, and the exports join the review in force too. Each used to write its own WHERE text, so a
new filter field had to be added in as many places; here a `Filter` is turned into SQL once, given a
`Join` saying which tables the caller's FROM clause already has under which alias. A table that is
not joined is reached by a subquery on the generation's foreign key.

Values are always bound as `?` parameters, never put into the SQL text: a reviewer named `o'brien`
or a flag named `x') OR 1 --` is just a value. Only the aliases (which the caller's own code writes)
are part of the text.
"""

from __future__ import annotations

from dataclasses import dataclass

UNREVIEWED = "unreviewed"  # the `decision` that means: no decision in force

Param = str | int  # what a filter binds


@dataclass(frozen=True)
class Filter:
    """Which generations to keep. Every field narrows; None, "" and () mean any.

    A number bound (`min_chars=0`, `run_id=0`) narrows even when it is zero; a text field narrows only
    when it is not empty, as a cleared box in a filter dialog means "any". The one exception is
    `decision`, which only None leaves open: the review queue's state is always a decision to match.
    """

    status: str | None = None  # pending, done, refused, failed
    decision: str | None = None  # accept, reject, skip, or UNREVIEWED (no decision in force); "" matches none
    instruction_type: str | None = None
    style: str | None = None  # the run's style
    run_id: int | None = None
    reviewer: str | None = None  # who made the decision in force
    flag: str | None = None  # the completion carries this quality flag
    # the completion carries none of these; with `Join.response_length` (the exports), an edited record is left
    # to the caller, since the stored flags are the model's text's (app.export_notes flags an edit)
    exclude_flags: tuple[str, ...] = ()
    min_chars: int | None = None  # length bounds, inclusive, in characters (see `Join.response_length`)
    max_chars: int | None = None


@dataclass(frozen=True)
class Join:
    """The caller's FROM clause: the alias of each table it joins, None for a table it does not.

    `generation` must be there; `review` is the review in force (`reviews.id = generations.review_id`).
    `response_length`: the length bounds count the response a training record carries (the edited
    text where the review has one), which needs `review`; otherwise they count the model's completion.
    """

    generation: str = "g"
    instruction: str | None = "i"
    run: str | None = "r"
    review: str | None = "rv"
    response_length: bool = False

    def __post_init__(self) -> None:
        if self.response_length and self.review is None:
            raise ValueError("response_length counts the edited text: it needs the review joined")


# the joins of each caller (exports and training read the same shape)
GENERATIONS_ONLY = Join(instruction=None, run=None, review=None)
WITH_INSTRUCTION_AND_RUN = Join(review=None)
WITH_REVIEW = Join(response_length=True)


def response_sql(join: Join) -> str:
    """The text a training record carries: the reviewer's edit if any, else the model's completion."""
    if join.review is None:
        raise ValueError("the response needs the review joined")
    return f"COALESCE({join.review}.edited_response, {join.generation}.completion)"


def clauses(where: Filter, join: Join) -> tuple[list[str], list[Param]]:
    """The filter as WHERE clauses (to be joined with AND) and their parameters, in the same order.

    Lists, so a caller can add its own fixed clauses (a search match, `g.status = 'done'`) around them.
    """
    g = join.generation
    out: list[str] = []
    params: list[Param] = []

    def add(sql: str, *values: Param) -> None:
        out.append(sql)
        params.extend(values)

    if where.status:
        add(f"{g}.status = ?", where.status)
    if where.decision == UNREVIEWED:
        add(f"{g}.decision IS NULL")
    elif where.decision is not None:
        add(f"{g}.decision = ?", where.decision)
    if where.instruction_type:
        if join.instruction:
            add(f"{join.instruction}.instruction_type = ?", where.instruction_type)
        else:
            add(
                f"{g}.instruction_id IN (SELECT id FROM instructions WHERE instruction_type = ?)",
                where.instruction_type,
            )
    if where.style:
        if join.run:
            add(f"{join.run}.style = ?", where.style)
        else:
            add(f"{g}.run_id IN (SELECT id FROM runs WHERE style = ?)", where.style)
    if where.run_id is not None:
        add(f"{g}.run_id = ?", where.run_id)
    if where.reviewer:
        if join.review:
            add(f"{join.review}.reviewer = ?", where.reviewer)
        else:
            add(f"{g}.review_id IN (SELECT id FROM reviews WHERE reviewer = ?)", where.reviewer)
    if where.flag:
        add(f"EXISTS (SELECT 1 FROM json_each({g}.flags) WHERE value = ?)", where.flag)
    for flag in where.exclude_flags:
        carried = f"NOT EXISTS (SELECT 1 FROM json_each({g}.flags) WHERE value = ?)"
        if join.response_length:  # an exported edit is not the text the stored flags describe: the app checks it
            carried = f"({join.review}.edited_response IS NOT NULL OR {carried})"
        add(carried, flag)
    length = f"length({response_sql(join) if join.response_length else f'{g}.completion'})"
    if where.min_chars is not None:
        add(f"{length} >= ?", where.min_chars)
    if where.max_chars is not None:
        add(f"{length} <= ?", where.max_chars)
    return out, params


def where_sql(where: Filter, join: Join, *fixed: str) -> tuple[str, list[Param]]:
    """`fixed` clauses (the caller's own, without parameters) and the filter's, joined with AND ("1" if none)."""
    found, params = clauses(where, join)
    return " AND ".join([*fixed, *found]) or "1", params
