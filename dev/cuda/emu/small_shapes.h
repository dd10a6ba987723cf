// dev/cuda/emu/small_shapes.h — the shapes the emulated labs run instead of the presets' (whose batches
// are far too big to emulate). They cover the code paths of every lab kernel: K 1 and 3, stride 1 and
// 2, channel counts that are and are not multiples of 8 (the bf16 conv's vector and scalar loads),
// tiles cut at the edges, GroupNorm with and without SiLU and time embedding, HW % 4 != 0 (scalar
// loads), G = 1, attention up to 64 tokens and head dim 64 (the fused kernels' largest shared memory),
// odd token counts, and parameter counts that are and are not multiples of 4.
#pragma once

static PresetShapes* small_shapes(void) {
    PresetShapes* s = (PresetShapes*)calloc(1, sizeof(PresetShapes));
    if (s == NULL) { fprintf(stderr, "Error: out of memory\n"); exit(EXIT_FAILURE); }
    const int conv[][7] = {  // B, Cin, H, W, Cout, K, stride
        {3, 16, 8, 8, 16, 3, 1}, {3, 3, 8, 8, 16, 3, 1}, {3, 16, 8, 8, 3, 3, 1}, {3, 16, 8, 8, 16, 3, 2},
        {3, 8, 4, 4, 24, 1, 1},  {2, 4, 4, 4, 72, 3, 1}, {2, 24, 6, 6, 8, 3, 2}, {3, 16, 2, 2, 8, 3, 1},
        {2, 72, 4, 4, 16, 3, 1}, {2, 12, 6, 6, 12, 1, 1},
    };
    for (const auto& c : conv) s->conv[s->nconv++] = ConvShape{"small", 1, c[0], c[1], c[2], c[3], c[4], c[5], c[6]};
    const int norm[][6] = {  // B, C, HW, G, silu, temb
        {2, 16, 64, 8, 1, 0}, {2, 16, 64, 8, 1, 1}, {3, 32, 16, 1, 0, 0}, {2, 64, 4, 8, 1, 1},
        {2, 16, 6, 8, 1, 1},  {2, 24, 36, 8, 1, 0}, {2, 16, 256, 8, 1, 1},
    };
    for (const auto& c : norm) s->norm[s->nnorm++] = NormShape{"small", 1, c[0], c[1], c[2], c[3], c[4], c[5]};
    const int attn[][4] = {{2, 16, 16, 4}, {2, 64, 4, 4}, {1, 256, 64, 4}, {2, 32, 9, 4}, {1, 128, 40, 4}};  // B, C, HW, NH
    for (const auto& c : attn) s->attn[s->nattn++] = AttnShape{"small", 1, c[0], c[1], c[2], c[3]};
    const size_t params[] = {1000, 1001, 70000};
    for (int i = 0; i < 3; i++) s->params[s->nparams++] = ParamShape{"small", 1, params[i], i != 1};
    return s;
}
