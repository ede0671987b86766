// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * pkvm_rs_bench: what host calls cost, timed from a Linux host kernel.
 *
 * Loaded once per boot under `-icount shift=0,sleep=off -seed 1`, where the
 * generic counter counts instructions (one tick is 10^9 / CNTFRQ of them).
 * It prints, from its init function (/init then unloads it):
 *  - the counter at load: instructions since the machine's reset, the
 *    hypervisor's own boot included (it assumes CNTVOFF_EL2 = 0);
 *  - for each row, the instructions at EL2 per call: the timed loop (a few
 *    EL1 instructions and `hvc #0` per call) minus the same loop with `nop`
 *    in place of each `hvc`, divided by the number of calls.
 *
 * `hyp=pkvm-rs` (default) times this project's host calls, `hyp=pkvm` the
 * equivalent pKVM (Linux 6.1, kvm-arm.mode=protected) host hypercalls; the
 * rows carry the same names so that the two columns line up. `hyp=none`
 * (no EL2) only reports the load time. Runs on the
 * CPU it was loaded on with preemption and interrupts off.
 */
#include <linux/errno.h>
#include <linux/gfp.h>
#include <linux/irqflags.h>
#include <linux/kernel.h>
#include <linux/math64.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/preempt.h>
#include <linux/string.h>
#include <asm/barrier.h>
#include <asm/sysreg.h>

static char *hyp = "pkvm-rs";
module_param(hyp, charp, 0444);
MODULE_PARM_DESC(hyp, "whose calls to time: pkvm-rs, pkvm or none");

static unsigned int calls = 10000;
module_param(calls, uint, 0444);
MODULE_PARM_DESC(calls, "calls (or call pairs) per row");

/* This project's host calls (shared/spec/ABI.md). */
#define RS_HYP_VERSION		0xC6000100UL
#define RS_HYP_FEATURES		0xC6000101UL
#define RS_SHARE_HYP		0xC6000110UL
#define RS_UNSHARE_HYP		0xC6000111UL
/* pKVM's, 6.1: KVM_HOST_SMCCC_FUNC(n) = 0xC6000000 + n (asm/kvm_asm.h). */
#define PKVM_SHARE_HYP		0xC6000009UL	/* __pkvm_host_share_hyp */
#define PKVM_UNSHARE_HYP	0xC600000AUL	/* __pkvm_host_unshare_hyp */
#define PKVM_READ_VMCR		0xC6000012UL	/* __vgic_v3_read_vmcr */
/* Known to neither. */
#define UNKNOWN_ID		0xC60001FFUL

static u64 counter(void)
{
	u64 t;

	isb();
	t = read_sysreg(cntvct_el0);
	isb();
	return t;
}

/*
 * One row's loop: per iteration, call (f0, a0, b0) and, if f1 is not 0,
 * (f1, a1, b1), each with `hvc #0` (or `nop` when `trap` is false), x3..x6
 * zero (this project's calls refuse unused arguments that are not). x0..x17
 * are clobbered as SMCCC 1.2 allows. Returns the counter ticks; *x0 and *x1
 * get the last call's x0 and x1.
 */
#define CLOBBERS "x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", \
	"x10", "x11", "x12", "x13", "x14", "x15", "x16", "x17", "memory", "cc"
#define LOOP(insn)							\
	asm volatile(							\
	"1:	mov	x0, %[f0]\n"					\
	"	mov	x1, %[a0]\n"					\
	"	mov	x2, %[b0]\n"					\
	"	mov	x3, xzr\n"					\
	"	mov	x4, xzr\n"					\
	"	mov	x5, xzr\n"					\
	"	mov	x6, xzr\n"					\
	"	" insn "\n"						\
	"	cbz	%[f1], 2f\n"					\
	"	mov	x0, %[f1]\n"					\
	"	mov	x1, %[a1]\n"					\
	"	mov	x2, %[b1]\n"					\
	"	mov	x3, xzr\n"					\
	"	mov	x4, xzr\n"					\
	"	mov	x5, xzr\n"					\
	"	mov	x6, xzr\n"					\
	"	" insn "\n"						\
	"2:	subs	%[n], %[n], #1\n"				\
	"	b.ne	1b\n"						\
	"	mov	%[r0], x0\n"					\
	"	mov	%[r1], x1\n"					\
	: [n] "+r" (n), [r0] "=r" (r0), [r1] "=r" (r1)			\
	: [f0] "r" (f[0]), [a0] "r" (a[0]), [b0] "r" (b[0]),		\
	  [f1] "r" (f[1]), [a1] "r" (a[1]), [b1] "r" (b[1])		\
	: CLOBBERS)

static noinline u64 timed(const u64 f[2], const u64 a[2], const u64 b[2],
			  u64 iterations, bool trap, u64 *x0, u64 *x1)
{
	u64 n = iterations, r0 = 0, r1 = 0, t0, t1;

	t0 = counter();
	if (trap)
		LOOP("hvc #0");
	else
		LOOP("nop");
	t1 = counter();
	*x0 = r0;
	*x1 = r1;
	return t1 - t0;
}

/* Counter ticks to thousandths of an instruction (icount shift=0: one
 * instruction per nanosecond). */
static u64 milli_instructions(u64 ticks, u64 freq)
{
	return mul_u64_u64_div_u64(ticks, 1000000000000ULL, freq ?: 1);
}

/* One row: per iteration one call (f[1] == 0) or a pair of calls, reported
 * per iteration. */
struct row {
	const char *name;
	u64 f[2], a[2], b[2];
	/* x1 is the call's result rather than an error code (pKVM's host
	 * calls that return a value). */
	bool x1_is_value;
};

/*
 * Times one row: a checked iteration first (each call must succeed, or
 * answer NOT_SUPPORTED for the unknown ID), then the loop with and without
 * the traps. Prints one line; returns 0 or -EIO.
 */
static int time_row(const struct row *r, bool expect_unknown, u64 freq)
{
	u64 x0, x1, with, without, per;
	unsigned long flags;

	local_irq_save(flags);
	timed(r->f, r->a, r->b, 1, true, &x0, &x1);
	local_irq_restore(flags);
	if (expect_unknown ? x0 != (u64)-1 :
	    (x0 != 0 || (x1 != 0 && !r->x1_is_value))) {
		pr_info("pkvm_rs_bench: %s: refused (x0 %#llx, x1 %#llx)\n",
			r->name, x0, x1);
		return -EIO;
	}
	local_irq_save(flags);
	with = timed(r->f, r->a, r->b, calls, true, &x0, &x1);
	without = timed(r->f, r->a, r->b, calls, false, &x0, &x1);
	local_irq_restore(flags);
	per = div64_u64(milli_instructions(with - min(with, without), freq),
			calls);
	pr_info("pkvm_rs_bench: %s: %llu.%03llu instructions at EL2 (%u iterations: %llu ticks, EL1 loop %llu ticks)\n",
		r->name, per / 1000, per % 1000, calls, with, without);
	return 0;
}

static int __init bench_init(void)
{
	u64 now = counter(), freq = read_sysreg(cntfrq_el0);
	bool pkvm = !strcmp(hyp, "pkvm");
	struct page *page;
	u64 pfn;
	int err = 0;

	pr_info("pkvm_rs_bench: reset to module load: %llu instructions (CNTVCT %llu, CNTFRQ %llu)\n",
		mul_u64_u64_div_u64(now, 1000000000ULL, freq ?: 1), now, freq);
	if (!strcmp(hyp, "none"))
		return 0;
	if (!pkvm && strcmp(hyp, "pkvm-rs")) {
		pr_err("pkvm_rs_bench: hyp=%s: not pkvm-rs, pkvm or none\n", hyp);
		return -EINVAL;
	}
	if (!calls)
		return -EINVAL;
	page = alloc_page(GFP_KERNEL);
	if (!page)
		return -ENOMEM;
	pfn = page_to_pfn(page);

	preempt_disable();
	{
		const struct row unknown = {
			"unknown function ID", { UNKNOWN_ID, 0 }, { 0 }, { 0 } };
		const struct row cheapest = pkvm ?
			(struct row){ "cheapest known call",
				      { PKVM_READ_VMCR, 0 }, { 0 }, { 0 },
				      true } :
			(struct row){ "cheapest known call",
				      { RS_HYP_VERSION, 0 }, { 0 }, { 0 } };
		const struct row share = pkvm ?
			(struct row){ "share + unshare of one page",
				      { PKVM_SHARE_HYP, PKVM_UNSHARE_HYP },
				      { pfn, pfn }, { 0, 0 } } :
			(struct row){ "share + unshare of one page",
				      { RS_SHARE_HYP, RS_UNSHARE_HYP },
				      { pfn, pfn }, { 1, 1 } };

		err |= time_row(&unknown, true, freq);
		err |= time_row(&cheapest, false, freq);
		if (!pkvm) {
			const struct row features = { "HYP_FEATURES",
				{ RS_HYP_FEATURES, 0 }, { 0 }, { 0 } };

			err |= time_row(&features, false, freq);
		}
		err |= time_row(&share, false, freq);
	}
	preempt_enable();

	/* A refused share may have left the page shared: keep it then. */
	if (!err)
		__free_page(page);
	pr_info("pkvm_rs_bench: done%s\n", err ? " (with errors)" : "");
	/* Loaded either way: a failed init would make busybox's insmod try
	 * again, timing everything twice. */
	return 0;
}

static void __exit bench_exit(void)
{
}

module_init(bench_init);
module_exit(bench_exit);
MODULE_DESCRIPTION("Host-call costs of pkvm-rs and pKVM, timed from the host");
MODULE_LICENSE("Dual MIT/GPL");
