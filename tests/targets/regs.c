/* Registers survive a checkpoint taken while the process sits in a raw read(0, buf, 1).
 *
 * Usage: regs MODE, MODE one of "sse", "avx", "avx512".
 * One asm block (per mode) loads known patterns into the vector registers (xmm0-15; ymm0-15;
 * zmm0-31 and k1-k7), rbx, r8-r10, r12-r15, the x87 stack (st0-st7), a non-default MXCSR and
 * x87 control word, then issues the raw syscall read(0, buf, 1) -- where the checkpoint happens
 * -- and stores every one of those registers back to memory. The C code compares and prints
 * exactly one verdict line: "ok regs MODE" or "FAIL: <what>". Exit status 0 only for "ok".
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define S_(x) #x
#define XS(x) S_(x)

/* Fixed layout, addressed from the asm through %rsi (which also is read()'s buffer). */
#define OFF_BUF 0
#define OFF_RET 64
#define OFF_MXS 72  /* saved MXCSR (to put back afterwards) */
#define OFF_MXI 76  /* MXCSR we set */
#define OFF_MXO 80  /* MXCSR after the syscall */
#define OFF_CWS 84  /* saved x87 control word */
#define OFF_CWI 86
#define OFF_CWO 88
#define OFF_GIN 128  /* rbx r8 r9 r10 r12 r13 r14 r15 */
#define OFF_GOUT 192
#define OFF_STIN 256 /* 8 x int64 for the x87 stack */
#define OFF_STOUT 320
#define OFF_KIN 384  /* k0..k7 as 16-bit words (k0 unused) */
#define OFF_KOUT 400
#define OFF_VIN 448  /* 32 registers x 64 bytes */
#define OFF_VOUT (448 + 2048)

#define NGPR 8
static const char *gpr_names[NGPR] = {"rbx", "r8", "r9", "r10", "r12", "r13", "r14", "r15"};

struct state {
    unsigned char buf[64];
    int64_t ret;
    uint32_t mxs, mxi, mxo;
    uint16_t cws, cwi, cwo;
    unsigned char pad1[128 - 90];
    uint64_t gin[NGPR];
    uint64_t gout[NGPR];
    int64_t stin[8];
    int64_t stout[8];
    uint16_t kin[8];
    uint16_t kout[8];
    unsigned char pad2[448 - 416];
    unsigned char vin[32][64];
    unsigned char vout[32][64];
} __attribute__((aligned(64)));

_Static_assert(offsetof(struct state, buf) == OFF_BUF, "buf");
_Static_assert(offsetof(struct state, ret) == OFF_RET, "ret");
_Static_assert(offsetof(struct state, mxs) == OFF_MXS, "mxs");
_Static_assert(offsetof(struct state, mxi) == OFF_MXI, "mxi");
_Static_assert(offsetof(struct state, mxo) == OFF_MXO, "mxo");
_Static_assert(offsetof(struct state, cws) == OFF_CWS, "cws");
_Static_assert(offsetof(struct state, cwi) == OFF_CWI, "cwi");
_Static_assert(offsetof(struct state, cwo) == OFF_CWO, "cwo");
_Static_assert(offsetof(struct state, gin) == OFF_GIN, "gin");
_Static_assert(offsetof(struct state, gout) == OFF_GOUT, "gout");
_Static_assert(offsetof(struct state, stin) == OFF_STIN, "stin");
_Static_assert(offsetof(struct state, stout) == OFF_STOUT, "stout");
_Static_assert(offsetof(struct state, kin) == OFF_KIN, "kin");
_Static_assert(offsetof(struct state, kout) == OFF_KOUT, "kout");
_Static_assert(offsetof(struct state, vin) == OFF_VIN, "vin");
_Static_assert(offsetof(struct state, vout) == OFF_VOUT, "vout");

static struct state st;

/* MXCSR: all exceptions masked, round toward zero (0x6000), flush-to-zero (0x8000),
 * denormals-are-zero (0x0040) and the sticky precision flag (0x0020). Default is 0x1F80. */
#define MXCSR_VALUE 0xFFE0u
/* x87 control word: all exceptions masked, precision 53 bits, round toward zero (default
 * 0x037F). */
#define X87CW_VALUE 0x0E7Fu

/* ---- pieces of the asm blocks ---- */

#define PROLOGUE                                   \
    "stmxcsr " XS(OFF_MXS) "(%%rsi)\n\t"           \
    "fnstcw " XS(OFF_CWS) "(%%rsi)\n\t"            \
    "ldmxcsr " XS(OFF_MXI) "(%%rsi)\n\t"           \
    "fldcw " XS(OFF_CWI) "(%%rsi)\n\t"             \
    "fildq " XS(OFF_STIN) "+0(%%rsi)\n\t"          \
    "fildq " XS(OFF_STIN) "+8(%%rsi)\n\t"          \
    "fildq " XS(OFF_STIN) "+16(%%rsi)\n\t"         \
    "fildq " XS(OFF_STIN) "+24(%%rsi)\n\t"         \
    "fildq " XS(OFF_STIN) "+32(%%rsi)\n\t"         \
    "fildq " XS(OFF_STIN) "+40(%%rsi)\n\t"         \
    "fildq " XS(OFF_STIN) "+48(%%rsi)\n\t"         \
    "fildq " XS(OFF_STIN) "+56(%%rsi)\n\t"         \
    "movq " XS(OFF_GIN) "+0(%%rsi), %%rbx\n\t"     \
    "movq " XS(OFF_GIN) "+8(%%rsi), %%r8\n\t"      \
    "movq " XS(OFF_GIN) "+16(%%rsi), %%r9\n\t"     \
    "movq " XS(OFF_GIN) "+24(%%rsi), %%r10\n\t"    \
    "movq " XS(OFF_GIN) "+32(%%rsi), %%r12\n\t"    \
    "movq " XS(OFF_GIN) "+40(%%rsi), %%r13\n\t"    \
    "movq " XS(OFF_GIN) "+48(%%rsi), %%r14\n\t"    \
    "movq " XS(OFF_GIN) "+56(%%rsi), %%r15\n\t"

/* read(0, %rsi = &st.buf, 1); the checkpoint interrupts it, the kernel restarts it. */
#define SYSCALL_READ              \
    "xorl %%eax, %%eax\n\t"       \
    "xorl %%edi, %%edi\n\t"       \
    "movl $1, %%edx\n\t"          \
    "syscall\n\t"                 \
    "movq %%rax, " XS(OFF_RET) "(%%rsi)\n\t"

/* st0 was loaded last: pop in reverse order so stout[i] should equal stin[i]. */
#define EPILOGUE                                   \
    "movq %%rbx, " XS(OFF_GOUT) "+0(%%rsi)\n\t"    \
    "movq %%r8, " XS(OFF_GOUT) "+8(%%rsi)\n\t"     \
    "movq %%r9, " XS(OFF_GOUT) "+16(%%rsi)\n\t"    \
    "movq %%r10, " XS(OFF_GOUT) "+24(%%rsi)\n\t"   \
    "movq %%r12, " XS(OFF_GOUT) "+32(%%rsi)\n\t"   \
    "movq %%r13, " XS(OFF_GOUT) "+40(%%rsi)\n\t"   \
    "movq %%r14, " XS(OFF_GOUT) "+48(%%rsi)\n\t"   \
    "movq %%r15, " XS(OFF_GOUT) "+56(%%rsi)\n\t"   \
    "stmxcsr " XS(OFF_MXO) "(%%rsi)\n\t"           \
    "fnstcw " XS(OFF_CWO) "(%%rsi)\n\t"            \
    "fistpq " XS(OFF_STOUT) "+56(%%rsi)\n\t"       \
    "fistpq " XS(OFF_STOUT) "+48(%%rsi)\n\t"       \
    "fistpq " XS(OFF_STOUT) "+40(%%rsi)\n\t"       \
    "fistpq " XS(OFF_STOUT) "+32(%%rsi)\n\t"       \
    "fistpq " XS(OFF_STOUT) "+24(%%rsi)\n\t"       \
    "fistpq " XS(OFF_STOUT) "+16(%%rsi)\n\t"       \
    "fistpq " XS(OFF_STOUT) "+8(%%rsi)\n\t"        \
    "fistpq " XS(OFF_STOUT) "+0(%%rsi)\n\t"        \
    "ldmxcsr " XS(OFF_MXS) "(%%rsi)\n\t"           \
    "fldcw " XS(OFF_CWS) "(%%rsi)\n\t"

#define GPR_CLOBBERS \
    "rax", "rbx", "rcx", "rdx", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"
#define X87_CLOBBERS "st", "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)"
#define XMM_CLOBBERS                                                                          \
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",   \
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"
#define XMM_HI_CLOBBERS                                                                       \
    "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", \
        "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"
#define K_CLOBBERS "k1", "k2", "k3", "k4", "k5", "k6", "k7"

#define X_LD(n) "movdqu " XS(OFF_VIN) "+" #n "*64(%%rsi), %%xmm" #n "\n\t"
#define X_ST(n) "movdqu %%xmm" #n ", " XS(OFF_VOUT) "+" #n "*64(%%rsi)\n\t"
#define Y_LD(n) "vmovdqu " XS(OFF_VIN) "+" #n "*64(%%rsi), %%ymm" #n "\n\t"
#define Y_ST(n) "vmovdqu %%ymm" #n ", " XS(OFF_VOUT) "+" #n "*64(%%rsi)\n\t"
#define Z_LD(n) "vmovdqu64 " XS(OFF_VIN) "+" #n "*64(%%rsi), %%zmm" #n "\n\t"
#define Z_ST(n) "vmovdqu64 %%zmm" #n ", " XS(OFF_VOUT) "+" #n "*64(%%rsi)\n\t"
#define K_LD(n) "kmovw " XS(OFF_KIN) "+" #n "*2(%%rsi), %%k" #n "\n\t"
#define K_ST(n) "kmovw %%k" #n ", " XS(OFF_KOUT) "+" #n "*2(%%rsi)\n\t"

#define ALL16(M)                                                                              \
    M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
#define HI16(M)                                                                               \
    M(16) M(17) M(18) M(19) M(20) M(21) M(22) M(23) M(24) M(25) M(26) M(27) M(28) M(29)      \
        M(30) M(31)
#define K17(M) M(1) M(2) M(3) M(4) M(5) M(6) M(7)

static void run_sse(struct state *s) {
    __asm__ volatile(PROLOGUE ALL16(X_LD) SYSCALL_READ ALL16(X_ST) EPILOGUE
                     :
                     : "S"(s)
                     : GPR_CLOBBERS, X87_CLOBBERS, XMM_CLOBBERS, "cc", "memory");
}

__attribute__((target("avx"))) static void run_avx(struct state *s) {
    __asm__ volatile(PROLOGUE ALL16(Y_LD) SYSCALL_READ ALL16(Y_ST) EPILOGUE "vzeroupper\n\t"
                     :
                     : "S"(s)
                     : GPR_CLOBBERS, X87_CLOBBERS, XMM_CLOBBERS, "cc", "memory");
}

__attribute__((target("avx512f"))) static void run_avx512(struct state *s) {
    __asm__ volatile(PROLOGUE ALL16(Z_LD) HI16(Z_LD) K17(K_LD) SYSCALL_READ ALL16(Z_ST)
                         HI16(Z_ST) K17(K_ST) EPILOGUE "vzeroupper\n\t"
                     :
                     : "S"(s)
                     : GPR_CLOBBERS, X87_CLOBBERS, XMM_CLOBBERS, XMM_HI_CLOBBERS, K_CLOBBERS,
                       "cc", "memory");
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    int nregs, width;
    const char *vname;
    void (*run)(struct state *);
    __builtin_cpu_init();
    if (!strcmp(mode, "sse")) {
        nregs = 16, width = 16, vname = "xmm", run = run_sse;
    } else if (!strcmp(mode, "avx") && __builtin_cpu_supports("avx")) {
        nregs = 16, width = 32, vname = "ymm", run = run_avx;
    } else if (!strcmp(mode, "avx512") && __builtin_cpu_supports("avx512f")) {
        nregs = 32, width = 64, vname = "zmm", run = run_avx512;
    } else {
        printf("FAIL: mode %s unknown or not supported by this CPU\n", mode);
        return 2;
    }

    memset(&st, 0, sizeof st);
    for (int r = 0; r < 32; r++)
        for (int i = 0; i < 64; i++)
            st.vin[r][i] = (unsigned char)next();
    for (int i = 0; i < NGPR; i++)
        st.gin[i] = next();
    for (int i = 0; i < 8; i++)
        st.stin[i] = (int64_t)(next() >> 2) - (i & 1 ? (1ll << 61) : 0); /* exact in 64 bits */
    for (int i = 1; i < 8; i++)
        st.kin[i] = (uint16_t)next() | 1;
    st.mxi = MXCSR_VALUE;
    st.cwi = X87CW_VALUE;
    st.ret = 0x5555;

    printf("ready\n");
    fflush(stdout);

    run(&st);

    /* The test sent "x\n" (or more): consume the rest of the line. */
    char c;
    while (read(0, &c, 1) == 1 && c != '\n')
        ;

    char why[256] = "";
    int bad = 0;
#define FAILF(...)                                          \
    do {                                                    \
        if (!bad++)                                         \
            snprintf(why, sizeof why, __VA_ARGS__);         \
    } while (0)
    if (st.ret != 1)
        FAILF("read returned %lld, expected 1", (long long)st.ret);
    else if (st.buf[0] != 'x')
        FAILF("read got byte 0x%02x, expected 'x'", st.buf[0]);
    for (int r = 0; r < nregs; r++)
        for (int i = 0; i < width; i++)
            if (st.vout[r][i] != st.vin[r][i])
                FAILF("%s%d byte %d is 0x%02x, expected 0x%02x", vname, r, i, st.vout[r][i],
                      st.vin[r][i]);
    for (int i = 0; i < NGPR; i++)
        if (st.gout[i] != st.gin[i])
            FAILF("%s is %#llx, expected %#llx", gpr_names[i], (unsigned long long)st.gout[i],
                  (unsigned long long)st.gin[i]);
    for (int i = 0; i < 8; i++)
        if (st.stout[i] != st.stin[i])
            FAILF("x87 stack slot %d is %lld, expected %lld", 7 - i, (long long)st.stout[i],
                  (long long)st.stin[i]);
    if (st.mxo != st.mxi)
        FAILF("MXCSR is %#x, expected %#x", st.mxo, st.mxi);
    if (st.cwo != st.cwi)
        FAILF("x87 control word is %#x, expected %#x", st.cwo, st.cwi);
    if (run == run_avx512)
        for (int i = 1; i < 8; i++)
            if (st.kout[i] != st.kin[i])
                FAILF("k%d is %#x, expected %#x", i, st.kout[i], st.kin[i]);

    if (bad) {
        printf("FAIL: %s (%d mismatches)\n", why, bad);
        return 1;
    }
    printf("ok regs %s\n", mode);
    return 0;
}
