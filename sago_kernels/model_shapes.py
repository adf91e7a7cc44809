"""Parameter shapes of well-known models, for layouts in benchmarks and capacity planning."""

from __future__ import annotations

# Llama-7B: vocabulary, hidden, intermediate, layers
LLAMA_7B = dict(vocab=32000, hidden=4096, intermediate=11008, layers=32)


def llama_shapes(scale: int) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter shapes of a Llama-style model with every width divided by ``scale``."""
    v, h, i = (
        LLAMA_7B["vocab"] // scale,
        LLAMA_7B["hidden"] // scale,
        LLAMA_7B["intermediate"] // scale,
    )
    shapes = [("embed_tokens.weight", (v, h))]
    for layer in range(LLAMA_7B["layers"] if scale == 1 else max(2, LLAMA_7B["layers"] // scale)):
        p = f"layers.{layer}."
        shapes += [
            (p + n, (h, h))
            for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")
        ]
        shapes += [
            (p + "gate_proj.weight", (i, h)),
            (p + "up_proj.weight", (i, h)),
            (p + "down_proj.weight", (h, i)),
        ]
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    return shapes + [("norm.weight", (h,)), ("lm_head.weight", (v, h))]


# Mistral-7B: like Llama but grouped-query attention (k/v project to 1024) and a 14336 MLP
MISTRAL_7B = dict(vocab=32000, hidden=4096, intermediate=14336, layers=32, kv=1024)


def mistral_shapes(scale: int) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter shapes of a Mistral-7B-style model with every width divided by ``scale``."""
    m = {k: v // scale for k, v in MISTRAL_7B.items() if k != "layers"}
    layers = MISTRAL_7B["layers"] if scale == 1 else max(2, MISTRAL_7B["layers"] // scale)
    shapes = [("embed_tokens.weight", (m["vocab"], m["hidden"]))]
    for layer in range(layers):
        p = f"layers.{layer}."
        shapes += [
            (p + "q_proj.weight", (m["hidden"], m["hidden"])),
            (p + "o_proj.weight", (m["hidden"], m["hidden"])),
        ]
        shapes += [
            (p + "k_proj.weight", (m["kv"], m["hidden"])),
            (p + "v_proj.weight", (m["kv"], m["hidden"])),
        ]
        shapes += [
            (p + "gate_proj.weight", (m["intermediate"], m["hidden"])),
            (p + "up_proj.weight", (m["intermediate"], m["hidden"])),
        ]
        shapes += [(p + "down_proj.weight", (m["hidden"], m["intermediate"]))]
        shapes += [
            (p + "input_layernorm.weight", (m["hidden"],)),
            (p + "post_attention_layernorm.weight", (m["hidden"],)),
        ]
    return shapes + [("norm.weight", (m["hidden"],)), ("lm_head.weight", (m["vocab"], m["hidden"]))]


def many_tiny_shapes(count: int = 4000, seed: int = 0) -> list[tuple[str, tuple[int, ...]]]:
    """``count`` segments of 1..1000 elements: the launch- and lookup-bound extreme."""
    import random

    rng = random.Random(seed)
    return [(f"p{i}", (rng.randint(1, 1000),)) for i in range(count)]
