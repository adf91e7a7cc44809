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
