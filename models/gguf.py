"""Reading what a GGUF says about itself: base or instruction-tuned, and on what evidence.

Only the model's own labels decide (`general.finetune`, the names). A chat template and chat-turn control tokens
decide nothing: Qwen2.5's base GGUFs carry both (the same tokenizer files ship with base and instruct), and so does
Gemma's base vocabulary. They are reported as notes worded so that they cannot be read as a verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

INSTRUCT_WORDS = re.compile(r"\b(instruct|chat|it|sft|dpo|rlhf|assistant)\b", re.IGNORECASE)
# general.finetune values that name a pretrained checkpoint, not a tune (e.g. Gemma's "pt", "Base" models)
BASE_WORDS = re.compile(r"^\s*(base|pt|pretrain(ed)?|pre[- ]?trained)\s*$", re.IGNORECASE)
CHAT_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|start_header_id|>",
    "<|eot_id|>",
    "[INST]",
    "<|user|>",
    "<|assistant|>",
)


@dataclass(frozen=True)
class ModelDescription:
    name: str
    architecture: str
    has_chat_template: bool
    chat_template_first_line: str | None
    looks_instruction_tuned: bool
    evidence: list[str] = field(default_factory=list)  # what decided `looks_instruction_tuned`, either way
    notes: list[str] = field(default_factory=list)  # seen, but deciding nothing (base models carry them too)


def _words(value: str) -> str:
    return value.replace("-", " ").replace("_", " ")


def describe_metadata(metadata: dict[str, str], chat_tokens_in_vocab: list[str] | None = None) -> ModelDescription:
    """Weigh `general.finetune` and the names; note the chat template and chat tokens without weighing them."""
    name = metadata.get("general.name") or metadata.get("general.basename") or "unknown"
    template = metadata.get("tokenizer.chat_template")
    evidence, notes, instruct = [], [], False
    finetune = (metadata.get("general.finetune") or "").strip()
    if finetune and BASE_WORDS.match(finetune):
        evidence.append(f"general.finetune = {finetune!r} names a pretrained checkpoint, not a tune")
    elif finetune:
        instruct = True
        evidence.append(f"general.finetune = {finetune!r}")
    named = {key: metadata.get(key) or "" for key in ("general.name", "general.basename")}
    for key, value in named.items():
        if INSTRUCT_WORDS.search(_words(value)):
            instruct = True
            evidence.append(f"{key} = {value!r} names an instruction/chat tune")
    if not instruct:
        given = [f"{key} = {value!r}" for key, value in named.items() if value]
        said = (
            f"neither {' nor '.join(given)} names an instruction/chat tune"
            if len(given) == 2
            else f"{given[0]} names no instruction/chat tune"
            if given
            else "neither general.name nor general.basename is set"
        )
        if finetune:
            evidence.append(said)
        else:
            evidence.insert(0, f"general.finetune is unset, and {said}")
    if template:
        notes.append("a chat template is present (base Qwen2.5 GGUFs ship one too); it is never rendered")
    if chat_tokens_in_vocab:
        notes.append(
            f"chat-turn markers are control tokens in the vocabulary ({', '.join(chat_tokens_in_vocab)}), "
            "as in base Qwen and Gemma vocabularies; they are never fed"
        )
    first_line = template.strip().splitlines()[0][:120] if template and template.strip() else None
    return ModelDescription(
        name=name,
        architecture=metadata.get("general.architecture", "unknown"),
        has_chat_template=bool(template),
        chat_template_first_line=first_line,
        looks_instruction_tuned=instruct,
        evidence=evidence,
        notes=notes,
    )
