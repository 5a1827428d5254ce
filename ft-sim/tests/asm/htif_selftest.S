# A bare-metal RV64 self-test in the riscv-tests style: it checks a few results,
# traps through mtvec, and reports through the HTIF `tohost` symbol:
# 1 = pass, (n << 1) | 1 = failure of check n.
    .section .text.init
    .globl _start
_start:
    la      t0, trap
    csrw    mtvec, t0
    li      gp, 1
    li      a0, 6
    li      a1, 7
    mul     a2, a0, a1
    li      a3, 42
    bne     a2, a3, fail
    li      gp, 2
    li      a0, -7
    li      a1, 2
    div     a2, a0, a1
    li      a3, -3
    bne     a2, a3, fail
    rem     a2, a0, a1
    li      a3, -1
    bne     a2, a3, fail
    li      gp, 3
    li      a0, 0x123456789
    csrw    mscratch, a0
    csrr    a1, mscratch
    bne     a0, a1, fail
    li      gp, 4
    li      t6, 0
    ecall
    li      t5, 11
    bne     t6, t5, fail
    li      gp, 5
    la      t0, data
    ld      t1, 0(t0)
    li      t2, 0x1122334455667788
    bne     t1, t2, fail
    lw      t1, 4(t0)
    li      t2, 0x11223344
    bne     t1, t2, fail
pass:
    li      a0, 1
    la      t0, tohost
    sd      a0, 0(t0)
1:  j       1b
fail:
    slli    a0, gp, 1
    ori     a0, a0, 1
    la      t0, tohost
    sd      a0, 0(t0)
2:  j       2b
trap:
    csrr    t6, mcause
    csrr    t0, mepc
    addi    t0, t0, 4
    csrw    mepc, t0
    mret

    .data
    .align 3
data:
    .dword  0x1122334455667788

    .section .tohost, "aw", @progbits
    .align  6
    .globl  tohost
tohost:
    .dword  0
    .align  6
    .globl  fromhost
fromhost:
    .dword  0
