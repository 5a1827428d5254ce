/* A freestanding program for the A-extension tests: built by riscv64-unknown-elf-gcc
 * for rv64imac, its atomics (AMOs from the __atomic builtins and inline asm, lr/sc loops
 * from compare-and-swap) must give the checksum the Rust test computes itself, and
 * its two rdtime reads (logged clock inputs) must not go backwards.
 * It reports through HTIF: tohost = (checksum << 1) | 1, folded to 32 bits. */
#include "guest.h"

static u64 state = 0x2545F4914F6CDD1Dul;

static u64 next(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static u64 d;
static u32 w;

static u64 mix(u64 h, u64 v) { return (h ^ v) * 0x100000001b3ul; }

static u64 rdtime(void) {
    u64 t;
    __asm__ volatile("rdtime %0" : "=r"(t));
    return t;
}

#define AMO(op, ptr, src)                                                          \
    ({                                                                             \
        long old_;                                                                 \
        __asm__ volatile(op " %0, %2, (%1)" : "=r"(old_) : "r"(ptr), "r"(src)      \
                         : "memory");                                              \
        (u64) old_;                                                                \
    })

u64 run(void) {
    u64 t0 = rdtime();
    u64 h = 0xcbf29ce484222325ul;
    for (int i = 0; i < 300; i++) {
        u64 x = next();
        h = mix(h, __atomic_fetch_add(&d, x, __ATOMIC_SEQ_CST));
        h = mix(h, __atomic_fetch_xor(&d, x >> 3, __ATOMIC_SEQ_CST));
        h = mix(h, __atomic_fetch_and(&d, x | 0xff00, __ATOMIC_SEQ_CST));
        h = mix(h, __atomic_fetch_or(&d, x & 0x0f0f, __ATOMIC_SEQ_CST));
        u64 cur = __atomic_load_n(&d, __ATOMIC_SEQ_CST);
        h = mix(h, __atomic_exchange_n(&d, x ^ cur, __ATOMIC_SEQ_CST));
        h = mix(h, __atomic_fetch_add(&w, (u32)x, __ATOMIC_SEQ_CST));
        h = mix(h, __atomic_exchange_n(&w, (u32)(x >> 32), __ATOMIC_SEQ_CST));
        u64 e = __atomic_load_n(&d, __ATOMIC_SEQ_CST);
        __atomic_compare_exchange_n(&d, &e, e * 3 + 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        u32 e32 = __atomic_load_n(&w, __ATOMIC_SEQ_CST);
        __atomic_compare_exchange_n(&w, &e32, e32 + 7, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        h = mix(h, d ^ w);
        u64 y = next();
        h = mix(h, AMO("amomin.d", &d, y));
        h = mix(h, AMO("amomax.d", &d, y >> 1));
        h = mix(h, AMO("amominu.d", &d, y ^ 0x5555));
        h = mix(h, AMO("amomaxu.d", &d, y >> 3));
        h = mix(h, AMO("amomin.w", &w, y));
        h = mix(h, AMO("amomaxu.w", &w, y >> 40));
    }
    u64 t1 = rdtime();
    u64 r = (h ^ (h >> 32)) & 0xffffffffu;
    if (t1 < t0)
        r ^= 0xdead;
    return r;
}

GUEST_EXIT_WITH(run)
