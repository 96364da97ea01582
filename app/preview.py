"""`gristmill preview`: the exact prompt a style renders, and what it is in tokens, before anything runs."""

from __future__ import annotations

import json

from gristmill.app.config import GenerateConfig
from gristmill.app.engines import open_engine
from gristmill.app.prompts import Style, load_style
from gristmill.models.base import token_ids_sha256
from gristmill.models.gguf import describe_metadata


def render_preview(
    config: GenerateConfig,
    instruction: str,
    input_text: str,
    instruction_type: str,
    seed: int,
    *,
    show_ids: bool = False,
    style: Style | None = None,
) -> str:
    """The prompt `style` (default: the config's, bound to the config's run seed) renders for the item seed `seed`:
    `generate` derives that from the run seed, the instruction's content hash and the sample (`item_seed`)."""
    if style is None:
        style = load_style(config.style).for_run(config.seed)  # a style's shared draws come from the run seed
    rendered = style.render(instruction, input_text, instruction_type, seed=seed)
    engine = open_engine(config, vocab_only=True)
    try:
        ids = engine.tokenize(rendered.text)
        # not engine.info(): that hashes the whole model file, which a preview never needs
        model_name = describe_metadata(getattr(engine, "metadata", {})).name
        add_bos = bool(getattr(engine, "add_bos", False))
    finally:
        engine.close()
    stops = tuple(dict.fromkeys((*rendered.stop, *config.stop)))
    parts = [
        f"--- prompt (style {style.name}, exactly as fed) ---\n",
        rendered.text,
        "\n--- end of prompt ---\n",
        f"tokens: {len(ids)} (model {model_name}, BOS {'added' if add_bos else 'not added'})\n",
        f"sha256 of ids: {token_ids_sha256(ids)}\n",
        f"stop: {json.dumps(list(stops), ensure_ascii=False)}\n",
    ]
    if rendered.meta:
        parts.append(f"meta: {json.dumps(rendered.meta, ensure_ascii=False)}\n")
    if show_ids:
        parts.append(f"ids: {json.dumps(ids)}\n")
    return "".join(parts)
