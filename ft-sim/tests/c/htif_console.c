/* HTIF as riscv-pk and newlib's stubs use it: console putchar (device 1), the
 * system-call proxy (device 0: SYS_write to the console, a bad descriptor, an unknown
 * call) and SYS_exit. The exit code says which answers were right: 7 = all. */
#include "guest.h"

static volatile u64 magic_mem[8] __attribute__((aligned(64)));

static void set_tohost(u64 v) {
    while (tohost)
        ;
    tohost = v;
}

static void wait_fromhost(void) {
    while (fromhost == 0)
        ;
    fromhost = 0;
}

static void put(char c) {
    set_tohost((1ul << 56) | (1ul << 48) | (unsigned char)c);
    wait_fromhost();
}

static long sys(long n, long a0, long a1, long a2) {
    magic_mem[0] = n;
    magic_mem[1] = a0;
    magic_mem[2] = a1;
    magic_mem[3] = a2;
    __sync_synchronize();
    set_tohost((u64)magic_mem);
    wait_fromhost();
    return (long)magic_mem[0];
}

static const char hello[] = "hello from putchar\n";
static const char written[] = "and from SYS_write\n";

void start_c(void) {
    for (const char *p = hello; *p; p++)
        put(*p);
    long n = sys(64, 1, (long)written, sizeof written - 1);
    long bad = sys(64, 7, (long)written, 1);
    long nosys = sys(1234, 0, 0, 0);
    sys(93, (n == (long)sizeof written - 1) + 2 * (bad == -9) + 4 * (nosys == -38), 0, 0);
    for (;;)
        ;
}

void _start(void) __attribute__((naked, section(".text.init")));
void _start(void) {
    __asm__ volatile("la sp, __stack_top\n"
                     "j start_c\n");
}
