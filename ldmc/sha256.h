// ldmc/sha256.h — SHA-256 (FIPS 180-4), so a U-Net checkpoint can record which VAE checkpoint it was
// trained with (train_ldm) and sample_ldm can tell when it is handed another one.
//   Sha256, sha256_init / sha256_update / sha256_final: the hash of a byte stream, hex-encoded
//   sha256_file(path, out): the hex digest of a whole regular file (anything else is an error)
#pragma once

#include "common.cuh"
#include "files.h"

typedef struct {
    uint32_t h[8];     // the running hash
    uint8_t buf[64];   // the current, partial 64-byte block
    size_t fill;       // bytes in buf
    uint64_t len;      // bytes hashed so far
} Sha256;

// the first 32 bits of the fractional parts of the cube roots of the first 64 primes
static const uint32_t SHA256_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static inline uint32_t sha256_rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

// one 64-byte block (big-endian words) into the running hash: the 64-round compression function
static inline void sha256_block(Sha256* s, const uint8_t* p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4*i] << 24 | (uint32_t)p[4*i+1] << 16 | (uint32_t)p[4*i+2] << 8 | p[4*i+3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = sha256_rotr(w[i-15], 7) ^ sha256_rotr(w[i-15], 18) ^ (w[i-15] >> 3);
        uint32_t s1 = sha256_rotr(w[i-2], 17) ^ sha256_rotr(w[i-2], 19) ^ (w[i-2] >> 10);
        w[i] = w[i-16] + s0 + w[i-7] + s1;
    }
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (sha256_rotr(e, 6) ^ sha256_rotr(e, 11) ^ sha256_rotr(e, 25)) + ((e & f) ^ (~e & g)) + SHA256_K[i] + w[i];
        uint32_t t2 = (sha256_rotr(a, 2) ^ sha256_rotr(a, 13) ^ sha256_rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static inline void sha256_init(Sha256* s) {
    // the first 32 bits of the fractional parts of the square roots of the first 8 primes
    const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof(h0));
    s->fill = 0;
    s->len = 0;
}

static inline void sha256_update(Sha256* s, const void* data, size_t n) {
    const uint8_t* p = (const uint8_t*)data;
    s->len += n;
    for (size_t i = 0; i < n; i++) {
        s->buf[s->fill++] = p[i];
        if (s->fill == 64) { sha256_block(s, s->buf); s->fill = 0; }
    }
}

// pads the message (0x80, zeros, its length in bits as 64-bit big-endian) and writes 64 hex digits + NUL
static inline void sha256_final(Sha256* s, char out[65]) {
    uint64_t bits = s->len * 8;
    uint8_t pad[72] = {0x80};
    size_t npad = (s->fill < 56 ? 56 : 120) - s->fill;   // so that fill + npad + 8 ends a block
    for (int i = 0; i < 8; i++) pad[npad + i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(s, pad, npad + 8);
    for (int i = 0; i < 8; i++) snprintf(out + 8 * i, 9, "%08x", s->h[i]);
}

// the hex digest (65 bytes with the NUL) of the regular file `path`; exits on any problem
static inline void sha256_file(const char* path, char out[65]) {
    check_regular_file(path, "file to hash");
    FILE* f = fopenCheck(path, "rb");
    Sha256 s;
    sha256_init(&s);
    uint8_t chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0) sha256_update(&s, chunk, got);
    if (ferror(f)) {
        fprintf(stderr, "Error: reading '%s' to hash it failed: %s\n", path, strerror(errno));
        exit(EXIT_FAILURE);
    }
    fclose(f);
    sha256_final(&s, out);
}
