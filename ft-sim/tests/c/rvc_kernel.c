/* A freestanding compute kernel for the C-extension tests: built by
 * riscv64-unknown-elf-gcc with and without compressed instructions, it must give the
 * same checksum on ft-sim, and the Rust test computes that checksum itself.
 * It reports through HTIF: tohost = (checksum << 1) | 1, the checksum folded to 32 bits. */
#include "guest.h"

static u64 state = 0x9E3779B97F4A7C15ul;

static u64 next(void) {
    /* xorshift64 */
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static u32 words[64];
static u8 bytes[256];

static void sort(u32 *v, int n) {
    for (int i = 1; i < n; i++) {
        u32 x = v[i];
        int j = i - 1;
        while (j >= 0 && v[j] > x) {
            v[j + 1] = v[j];
            j--;
        }
        v[j + 1] = x;
    }
}

static u64 fib(u32 n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

u64 kernel(void) {
    u64 h = 0xcbf29ce484222325ul;
    for (int i = 0; i < 64; i++)
        words[i] = (u32)next();
    sort(words, 64);
    for (int i = 0; i < 64; i++)
        h = (h ^ words[i]) * 0x100000001b3ul;
    for (int i = 0; i < 256; i++)
        bytes[i] = (u8)(next() >> 56);
    for (int i = 0; i < 256; i++) {
        u8 b = bytes[i];
        switch (b & 7) {
        case 0: h += b; break;
        case 1: h ^= (u64)b << 17; break;
        case 2: h -= (u64)b * 3; break;
        case 3: h = (h << 5) | (h >> 59); break;
        case 4: h = (u64)((long)h >> 3) ^ b; break;
        case 5: h = h / (b | 1) + h % (b | 1); break;
        case 6: h = (u32)h * (u64)(u32)(h >> 32); break;
        default: h = ~h; break;
        }
    }
    h += fib(20);
    /* HTIF's exit payload has 47 bits for the code: fold the checksum to 32. */
    return (h ^ (h >> 32)) & 0xffffffffu;
}

GUEST_EXIT_WITH(kernel)
