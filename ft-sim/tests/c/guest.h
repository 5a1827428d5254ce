/* What the freestanding test guests share: fixed-width names, the HTIF words, and an
 * entry point that sets the stack and reports a function's result as the exit code.
 * The tests' gcc helper links .text.init at RAM's base and defines __stack_top. */
typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned char u8;

volatile u64 tohost __attribute__((section(".tohost"), aligned(8)));
volatile u64 fromhost __attribute__((section(".tohost"), aligned(8)));

/* _start: call FN (returning u64, at most 47 bits) and exit with its value through
 * HTIF (tohost = (code << 1) | 1). */
#define GUEST_EXIT_WITH(FN)                                                          \
    void _start(void) __attribute__((naked, section(".text.init")));                 \
    void _start(void) {                                                              \
        __asm__ volatile("la sp, __stack_top\n"                                      \
                         "call " #FN "\n"                                            \
                         "slli a0, a0, 1\n"                                          \
                         "ori a0, a0, 1\n"                                           \
                         "la t0, tohost\n"                                           \
                         "sd a0, 0(t0)\n"                                            \
                         "1: j 1b\n");                                               \
    }
