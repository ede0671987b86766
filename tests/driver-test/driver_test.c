// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * Tests of the pkvm-rs host driver (/dev/pkvm-rs), run as a static program
 * inside the Linux host's initramfs. It is a small VMM: every ioctl with
 * good and bad arguments, a tiny guest in a normal and in a protected VM
 * (a forwarded HVC, an emulated load, a WFI on the guest's timer, PSCI
 * SYSTEM_OFF), two vCPUs on two threads, a kick, a signal, and a VMM
 * killed with SIGKILL mid-run; after each, the driver's page counts must
 * come back to where they were.
 *
 * Prints one `PASS name` or `FAIL name: why` line per check and closes with
 * `driver-test: N passed, N failed`; exits 0 only if nothing failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "uapi/pkvm_rs.h"

_Static_assert(sizeof(struct pkvm_rs_run) == 4096, "run page size");
_Static_assert(__builtin_offsetof(struct pkvm_rs_run, inject_irq) == 168,
	       "run page layout");
_Static_assert(__builtin_offsetof(struct pkvm_rs_run, kick_vcpus) == 184,
	       "run page layout");

#define PAGE 4096UL
#define GUEST_BASE 0x80000000ULL
#define GUEST_PAGES 32
#define MMIO_IPA 0x90000000ULL
/* The guest's forwarded call (not a hypervisor call: an HVC exit). */
#define GUEST_CALL 0xC6000F42ULL
/* Data page of vCPU n: GUEST_BASE + (DATA_PAGE + n) * PAGE. */
#define DATA_PAGE 4

/*
 * The guest, position independent. x0 = its data page's IPA; bit 0 set
 * means "protected" (skip the emulated load, which a protected VM cannot
 * complete). Data page words: [0] the forwarded call's answer, [1] the
 * emulated load's value, [2] and [3] the counter before and after the
 * timer wait.
 */
__asm__(
	".pushsection .rodata\n"
	".balign 4\n"
	".global guest_main, guest_main_end\n"
	"guest_main:\n"
	"	and	x19, x0, #~0xfff\n"
	"	and	x20, x0, #1\n"
	"	movz	x0, #0x0F42\n"
	"	movk	x0, #0xC600, lsl #16\n"
	"	mov	x1, #42\n"
	"	hvc	#0\n"
	"	str	x0, [x19]\n"
	"	cbnz	x20, 1f\n"
	"	movz	x2, #0x9000, lsl #16\n"
	"	ldr	x3, [x2]\n"
	"	str	x3, [x19, #8]\n"
	"1:	mrs	x4, cntvct_el0\n"
	"	str	x4, [x19, #16]\n"
	"	mrs	x5, cntfrq_el0\n"
	"	lsr	x5, x5, #5\n" /* 1/32 s */
	"	add	x5, x4, x5\n"
	"	msr	cntv_cval_el0, x5\n"
	"	mov	x6, #1\n"
	"	msr	cntv_ctl_el0, x6\n"
	"	isb\n"
	"2:	wfi\n"
	"	mrs	x6, cntv_ctl_el0\n"
	"	tbz	x6, #2, 2b\n" /* ISTATUS */
	"	msr	cntv_ctl_el0, xzr\n"
	"	mrs	x4, cntvct_el0\n"
	"	str	x4, [x19, #24]\n"
	"	movz	x0, #0x0008\n"
	"	movk	x0, #0x8400, lsl #16\n" /* PSCI SYSTEM_OFF */
	"	hvc	#0\n"
	"	b	.\n"
	"guest_main_end:\n"
	/* Spins for ever: for the SIGKILL test. */
	".global guest_spin, guest_spin_end\n"
	"guest_spin:\n"
	"	b	.\n"
	"guest_spin_end:\n"
	/* Waits in WFI until [x0] is not zero, then SYSTEM_OFF: the kick. */
	".global guest_wait, guest_wait_end\n"
	"guest_wait:\n"
	"1:	wfi\n"
	"	ldr	x1, [x0]\n"
	"	cbz	x1, 1b\n"
	"	movz	x0, #0x0008\n"
	"	movk	x0, #0x8400, lsl #16\n"
	"	hvc	#0\n"
	"	b	.\n"
	"guest_wait_end:\n"
	/* Writes 0xBEEF to its data page (x0), MEM_SHAREs it, reports the
	 * result with the forwarded call, MEM_UNSHAREs it, reports again,
	 * SYSTEM_OFF. */
	".global guest_share, guest_share_end\n"
	"guest_share:\n"
	"	mov	x19, x0\n"
	"	movz	x1, #0xBEEF\n"
	"	str	x1, [x19]\n"
	"	mov	x1, x19\n"
	"	mov	x2, xzr\n"
	"	mov	x3, xzr\n"
	"	movz	x0, #0x0003\n"
	"	movk	x0, #0xC600, lsl #16\n" /* MEM_SHARE */
	"	hvc	#0\n"
	"	mov	x1, x0\n"
	"	movz	x0, #0x0F42\n"
	"	movk	x0, #0xC600, lsl #16\n"
	"	hvc	#0\n"
	"	mov	x1, x19\n"
	"	mov	x2, xzr\n"
	"	mov	x3, xzr\n"
	"	movz	x0, #0x0004\n"
	"	movk	x0, #0xC600, lsl #16\n" /* MEM_UNSHARE */
	"	hvc	#0\n"
	"	mov	x1, x0\n"
	"	movz	x0, #0x0F42\n"
	"	movk	x0, #0xC600, lsl #16\n"
	"	hvc	#0\n"
	"	movz	x0, #0x0008\n"
	"	movk	x0, #0x8400, lsl #16\n"
	"	hvc	#0\n"
	"	b	.\n"
	"guest_share_end:\n"
	".popsection\n");

extern const char guest_main[], guest_main_end[];
extern const char guest_spin[], guest_spin_end[];
extern const char guest_wait[], guest_wait_end[];
extern const char guest_share[], guest_share_end[];

static int passed, failed;
static int dev = -1;

static void check(int ok, const char *name, const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		printf("PASS %s\n", name);
		passed++;
		return;
	}
	printf("FAIL %s: ", name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	failed++;
}

/* The ioctl failed with exactly `want`. */
static void expect_errno(long ret, int want, const char *name)
{
	int e = errno;

	check(ret == -1 && e == want, name, "returned %ld, errno %d (%s); want %s",
	      ret, ret == -1 ? e : 0, ret == -1 ? strerror(e) : "-",
	      strerror(want));
}

static struct pkvm_rs_stats stats(void)
{
	struct pkvm_rs_stats s;

	memset(&s, 0xff, sizeof(s));
	if (ioctl(dev, PKVM_RS_GET_STATS, &s))
		perror("PKVM_RS_GET_STATS");
	return s;
}

/* Waits up to 2 s for the driver to hold nothing (teardown on close). */
static void expect_nothing_held(const char *name)
{
	struct pkvm_rs_stats s;
	int i;

	for (i = 0; i < 200; i++) {
		s = stats();
		if (!s.pages_allocated && !s.pages_pinned && !s.vms)
			break;
		usleep(10000);
	}
	check(!s.pages_allocated && !s.pages_pinned && !s.vms &&
	      !s.pages_leaked && !s.pages_not_zeroed, name,
	      "allocated %llu, pinned %llu, leaked %llu, VMs %llu, not zeroed %llu",
	      (unsigned long long)s.pages_allocated,
	      (unsigned long long)s.pages_pinned,
	      (unsigned long long)s.pages_leaked, (unsigned long long)s.vms,
	      (unsigned long long)s.pages_not_zeroed);
}

static int create_vm(uint64_t flags)
{
	struct pkvm_rs_create_vm c = { .flags = flags };

	return ioctl(dev, PKVM_RS_CREATE_VM, &c);
}

static double now(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Guest memory for a VM: GUEST_PAGES pages with `code` at offset 0. */
static char *guest_memory(const char *code, const char *end)
{
	char *mem = mmap(NULL, GUEST_PAGES * PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	memcpy(mem, code, end - code);
	return mem;
}

static int set_memory(int vm, char *mem, uint64_t image_size)
{
	struct pkvm_rs_memory m = {
		.guest_phys = GUEST_BASE,
		.size = GUEST_PAGES * PAGE,
		.userspace_addr = (uintptr_t)mem,
		.image_size = image_size,
	};

	return ioctl(vm, PKVM_RS_SET_MEMORY, &m);
}

struct vcpu {
	int fd;
	struct pkvm_rs_run *run;
};

static struct vcpu create_vcpu(int vm, uint64_t entry, uint64_t x0)
{
	struct vcpu v = { .fd = ioctl(vm, PKVM_RS_CREATE_VCPU, 0) };

	v.run = MAP_FAILED;
	if (v.fd >= 0)
		v.run = mmap(NULL, PKVM_RS_RUN_PAGE_SIZE, PROT_READ | PROT_WRITE,
			     MAP_SHARED, v.fd, 0);
	if (v.run != MAP_FAILED) {
		v.run->entry = entry;
		v.run->x0 = x0;
	}
	return v;
}

/* One run of guest_main on `v`: the exits it must give, in order.
 * Returns a description of what went wrong, or NULL. */
static const char *drive_main(struct vcpu *v, int protected, double *wfi_wall,
			      double *wfi_cpu)
{
	static __thread char why[160];
	struct pkvm_rs_run *run = v->run;
	double wall, cpu;

	if (ioctl(v->fd, PKVM_RS_RUN, 0))
		return "first run failed";
	if (run->exit_reason != PKVM_RS_EXIT_HVC ||
	    run->hvc_args[0] != GUEST_CALL || run->hvc_args[1] != 42) {
		snprintf(why, sizeof(why), "exit %llu x0 %#llx x1 %llu, want HVC",
			 (unsigned long long)run->exit_reason,
			 (unsigned long long)run->hvc_args[0],
			 (unsigned long long)run->hvc_args[1]);
		return why;
	}
	run->hvc_results[0] = 84;
	if (!protected) {
		if (ioctl(v->fd, PKVM_RS_RUN, 0))
			return "second run failed";
		if (run->exit_reason != PKVM_RS_EXIT_MEM_FAULT ||
		    run->fault_ipa != MMIO_IPA ||
		    !(run->fault_flags & PKVM_RS_FAULT_SYNDROME_VALID) ||
		    (run->fault_flags & PKVM_RS_FAULT_WRITE)) {
			snprintf(why, sizeof(why),
				 "exit %llu ipa %#llx flags %#llx, want MEM_FAULT read",
				 (unsigned long long)run->exit_reason,
				 (unsigned long long)run->fault_ipa,
				 (unsigned long long)run->fault_flags);
			return why;
		}
		run->mmio_read_data = 0x1234;
	}
	/* The timer wait happens inside this run: WFI exits sleep. */
	wall = now(CLOCK_MONOTONIC);
	cpu = now(CLOCK_THREAD_CPUTIME_ID);
	if (ioctl(v->fd, PKVM_RS_RUN, 0))
		return "last run failed";
	*wfi_wall = now(CLOCK_MONOTONIC) - wall;
	*wfi_cpu = now(CLOCK_THREAD_CPUTIME_ID) - cpu;
	if (run->exit_reason != PKVM_RS_EXIT_SYSTEM_EVENT ||
	    run->system_event != PKVM_RS_SYSTEM_EVENT_OFF) {
		snprintf(why, sizeof(why), "exit %llu event %llu, want SYSTEM_OFF",
			 (unsigned long long)run->exit_reason,
			 (unsigned long long)run->system_event);
		return why;
	}
	return NULL;
}

static void test_device(void)
{
	struct pkvm_rs_version v;
	struct pkvm_rs_stats s;

	memset(&v, 0, sizeof(v));
	check(ioctl(dev, PKVM_RS_GET_VERSION, &v) == 0 &&
	      v.api_version == PKVM_RS_API_VERSION &&
	      v.hyp_version == 0x10000 && v.max_vms >= 1 && v.max_vcpus >= 2,
	      "version", "api %u hyp %#x VMs %u vCPUs %u", v.api_version,
	      v.hyp_version, v.max_vms, v.max_vcpus);
	printf("driver-test: hypervisor %u.%u, features %#llx, %u VMs, %u vCPUs each\n",
	       v.hyp_version >> 16, v.hyp_version & 0xffff,
	       (unsigned long long)v.hyp_features, v.max_vms, v.max_vcpus);
	s = stats();
	check(s.pages_allocated == 0 && s.vms == 0, "stats at start",
	      "allocated %llu VMs %llu", (unsigned long long)s.pages_allocated,
	      (unsigned long long)s.vms);
	expect_errno(ioctl(dev, PKVM_RS_GET_VERSION, NULL), EFAULT,
		     "version to a bad address");
	expect_errno(ioctl(dev, _IO(PKVM_RS_IOCTL_TYPE, 0x7f), 0), ENOTTY,
		     "unknown ioctl");
	expect_errno(ioctl(dev, PKVM_RS_SET_MEMORY, 0), ENOTTY,
		     "VM ioctl on the device");
	expect_errno(create_vm(1ULL << 5), EINVAL, "VM with unknown flags");
	expect_errno(ioctl(dev, PKVM_RS_CREATE_VM, NULL), EFAULT,
		     "VM create from a bad address");
	if (!(v.hyp_features & PKVM_RS_FEAT_MTE))
		expect_errno(create_vm(PKVM_RS_VM_MTE), EINVAL,
			     "MTE VM without MTE");
}

static void test_normal_vm(void)
{
	char *mem = guest_memory(guest_main, guest_main_end);
	struct pkvm_rs_memory m;
	struct pkvm_rs_stats s;
	double wall = 0, cpu = 0;
	const char *why;
	uint64_t *data, ticks_per_s;
	struct vcpu v;
	void *p;
	int vm;

	vm = create_vm(0);
	check(vm >= 0, "normal VM create", "errno %d", errno);
	if (vm < 0)
		return;
	m = (struct pkvm_rs_memory){ .guest_phys = GUEST_BASE + 1,
				     .size = PAGE,
				     .userspace_addr = (uintptr_t)mem };
	expect_errno(ioctl(vm, PKVM_RS_SET_MEMORY, &m), EINVAL,
		     "memory at an unaligned address");
	m.guest_phys = GUEST_BASE;
	m.size = 0;
	expect_errno(ioctl(vm, PKVM_RS_SET_MEMORY, &m), EINVAL,
		     "memory of size 0");
	m.size = PAGE;
	m.image_size = PAGE;
	expect_errno(ioctl(vm, PKVM_RS_SET_MEMORY, &m), EINVAL,
		     "image size in a normal VM");
	m.image_size = 0;
	m.prot = PKVM_RS_PROT_W;
	expect_errno(ioctl(vm, PKVM_RS_SET_MEMORY, &m), EINVAL,
		     "memory without read permission");
	m.prot = 0;
	m.guest_phys = 1ULL << 40;
	expect_errno(ioctl(vm, PKVM_RS_SET_MEMORY, &m), EINVAL,
		     "memory beyond the IPA space");
	m.guest_phys = GUEST_BASE;
	p = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	munmap(p, PAGE);
	m.userspace_addr = (uintptr_t)p;
	expect_errno(ioctl(vm, PKVM_RS_SET_MEMORY, &m), EFAULT,
		     "memory the VMM does not have");
	expect_errno(ioctl(vm, PKVM_RS_SET_MEMORY, NULL), EFAULT,
		     "memory from a bad address");
	check(set_memory(vm, mem, 0) == 0, "normal VM memory", "errno %d",
	      errno);
	expect_errno(set_memory(vm, mem, 0), EEXIST, "overlapping memory");
	s = stats();
	check(s.pages_pinned == GUEST_PAGES && s.vms == 1, "pinned pages",
	      "pinned %llu VMs %llu", (unsigned long long)s.pages_pinned,
	      (unsigned long long)s.vms);

	v = create_vcpu(vm, GUEST_BASE, GUEST_BASE + DATA_PAGE * PAGE);
	check(v.fd >= 0 && v.run != MAP_FAILED, "vCPU and run page",
	      "fd %d errno %d", v.fd, errno);
	if (v.fd < 0 || v.run == MAP_FAILED)
		goto out;
	expect_errno(ioctl(v.fd, PKVM_RS_RUN, 1), EINVAL, "run with an argument");
	expect_errno(ioctl(v.fd, PKVM_RS_SET_MEMORY, &m), ENOTTY,
		     "VM ioctl on a vCPU");
	p = mmap(NULL, 2 * PAGE, PROT_READ, MAP_SHARED, v.fd, 0);
	expect_errno(p == MAP_FAILED ? -1 : 0, EINVAL, "mmap of two pages");
	p = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, v.fd, PAGE);
	expect_errno(p == MAP_FAILED ? -1 : 0, EINVAL, "mmap at offset 4096");
	p = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE, v.fd, 0);
	expect_errno(p == MAP_FAILED ? -1 : 0, EINVAL, "private mmap");
	expect_errno(ioctl(vm, PKVM_RS_KICK_VCPU, 7), ENOENT, "kick of no vCPU");

	why = drive_main(&v, 0, &wall, &cpu);
	check(!why, "normal guest: HVC, emulated load, WFI, SYSTEM_OFF", "%s",
	      why);
	data = (uint64_t *)(mem + DATA_PAGE * PAGE);
	check(data[0] == 84 && data[1] == 0x1234, "normal guest memory",
	      "answer %llu load %#llx", (unsigned long long)data[0],
	      (unsigned long long)data[1]);
	__asm__ volatile("mrs %0, cntfrq_el0" : "=r"(ticks_per_s));
	check(data[3] - data[2] >= ticks_per_s / 32, "guest timer waited",
	      "%llu ticks", (unsigned long long)(data[3] - data[2]));
	/* Sleeping, not spinning: the thread used little CPU in the wait. */
	check(wall >= 0.02 && cpu < wall / 2, "WFI sleeps",
	      "%.3f s wall, %.3f s CPU", wall, cpu);
	munmap(v.run, PAGE);
	close(v.fd);
out:
	close(vm);
	expect_nothing_held("normal VM: every page back");
	munmap(mem, GUEST_PAGES * PAGE);
}

/* Data page of the protected VM test: in the region's second 64 KiB. */
#define PROTECTED_DATA_PAGE 20

/* The frame the driver donated for guest page `page` of `vm`, 0 if none
 * (PKVM_RS_GUEST_PAGE: ENOENT). */
static uint64_t guest_pfn(int vm, uint64_t page)
{
	struct pkvm_rs_page_info pi = { .ipa = GUEST_BASE + page * PAGE };

	return ioctl(vm, PKVM_RS_GUEST_PAGE, &pi) == 0 ? pi.pfn : 0;
}

static void test_protected_vm(void)
{
	char *mem = guest_memory(guest_main, guest_main_end);
	size_t image = guest_main_end - guest_main;
	struct pkvm_rs_memory m;
	struct pkvm_rs_stats s;
	double wall = 0, cpu = 0;
	const char *why;
	struct vcpu v;
	int vm;

	vm = create_vm(PKVM_RS_VM_PROTECTED);
	check(vm >= 0, "protected VM create", "errno %d", errno);
	if (vm < 0)
		return;
	m = (struct pkvm_rs_memory){ .guest_phys = GUEST_BASE,
				     .size = PAGE,
				     .userspace_addr = (uintptr_t)mem,
				     .image_size = 2 * PAGE };
	expect_errno(ioctl(vm, PKVM_RS_SET_MEMORY, &m), EINVAL,
		     "image larger than its region");
	check(set_memory(vm, mem, image) == 0, "protected VM memory",
	      "errno %d", errno);
	s = stats();
	check(s.pages_pinned == 0 && s.pages_allocated >= 16 + 1,
	      "protected pages are the driver's", "allocated %llu pinned %llu",
	      (unsigned long long)s.pages_allocated,
	      (unsigned long long)s.pages_pinned);
	/* The data page is in the second 64 KiB group, which nothing
	 * donated yet. */
	v = create_vcpu(vm, GUEST_BASE,
			(GUEST_BASE + PROTECTED_DATA_PAGE * PAGE) | 1);
	check(v.fd >= 0 && v.run != MAP_FAILED, "protected vCPU", "errno %d",
	      errno);
	if (v.fd < 0 || v.run == MAP_FAILED)
		goto out;
	why = drive_main(&v, 1, &wall, &cpu);
	check(!why, "protected guest: HVC, on-demand page, WFI, SYSTEM_OFF",
	      "%s", why);
	/* The data page came from a MEM_FAULT the driver served, with the
	 * rest of its group: 16 contiguous frames in guest order. */
	check(stats().pages_allocated >= s.pages_allocated + 16,
	      "protected pages donated on demand, 16 at a time",
	      "allocated %llu, was %llu",
	      (unsigned long long)stats().pages_allocated,
	      (unsigned long long)s.pages_allocated);
	{
		uint64_t fault = guest_pfn(vm, PROTECTED_DATA_PAGE);

		check(fault &&
		      guest_pfn(vm, 16) == fault - (PROTECTED_DATA_PAGE - 16) &&
		      guest_pfn(vm, 31) == fault + (31 - PROTECTED_DATA_PAGE),
		      "a first touch donates its aligned group",
		      "pfns %#llx %#llx %#llx",
		      (unsigned long long)guest_pfn(vm, 16),
		      (unsigned long long)fault,
		      (unsigned long long)guest_pfn(vm, 31));
		/* The image's group is not touched past the image. */
		check(guest_pfn(vm, 15) == 0,
		      "an untouched page outside the group stays the driver's",
		      "pfn %#llx", (unsigned long long)guest_pfn(vm, 15));
	}
	/* The VMM's copy of the image is its own, and untouched. */
	check(memcmp(mem, guest_main, image) == 0 &&
	      ((uint64_t *)(mem + PROTECTED_DATA_PAGE * PAGE))[0] == 0,
	      "VMM memory not the guest's", "changed");
	munmap(v.run, PAGE);
	close(v.fd);
out:
	close(vm);
	expect_nothing_held("protected VM: every page back");
	munmap(mem, GUEST_PAGES * PAGE);
}

static sigjmp_buf on_bus;

static void bus_handler(int sig)
{
	siglongjmp(on_bus, sig);
}

/* Reads the word at p; 1 with *value set, or 0 after a SIGBUS. */
static int try_read(volatile uint64_t *p, uint64_t *value)
{
	struct sigaction sa = { .sa_handler = bus_handler }, old;
	int ok = 0;

	sigaction(SIGBUS, &sa, &old);
	if (sigsetjmp(on_bus, 1) == 0) {
		*value = *p;
		ok = 1;
	}
	sigaction(SIGBUS, &old, NULL);
	return ok;
}

/* A protected guest's shared page is visible through mmap of the VM file;
 * its other pages, and the page once unshared, are SIGBUS. */
static void test_protected_share(void)
{
	char *mem = guest_memory(guest_share, guest_share_end);
	uint64_t data_ipa = GUEST_BASE + DATA_PAGE * PAGE, value = 0;
	volatile uint64_t *shared = MAP_FAILED, *code = MAP_FAILED;
	struct vcpu v;
	void *p;
	int vm, normal;

	normal = create_vm(0);
	p = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, normal, 0);
	expect_errno(p == MAP_FAILED ? -1 : 0, ENODEV, "mmap of a normal VM");
	close(normal);

	vm = create_vm(PKVM_RS_VM_PROTECTED);
	if (vm < 0 || set_memory(vm, mem, PAGE)) {
		check(0, "share VM", "errno %d", errno);
		return;
	}
	v = create_vcpu(vm, GUEST_BASE, data_ipa);
	if (v.fd < 0 || v.run == MAP_FAILED) {
		check(0, "share vCPU", "errno %d", errno);
		goto out;
	}
	p = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE, vm, data_ipa);
	expect_errno(p == MAP_FAILED ? -1 : 0, EINVAL, "private mmap of a VM");
	shared = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, vm, data_ipa);
	code = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, vm, GUEST_BASE);
	if (shared == MAP_FAILED || code == MAP_FAILED) {
		check(0, "mmap of a protected VM", "errno %d", errno);
		goto out;
	}
	check(!try_read(shared, &value), "unshared page is SIGBUS before the guest runs",
	      "read %#llx", (unsigned long long)value);
	check(ioctl(v.fd, PKVM_RS_RUN, 0) == 0 &&
	      v.run->exit_reason == PKVM_RS_EXIT_HVC && v.run->hvc_args[1] == 0,
	      "guest MEM_SHARE", "exit %llu result %#llx",
	      (unsigned long long)v.run->exit_reason,
	      (unsigned long long)v.run->hvc_args[1]);
	check(try_read(shared, &value) && value == 0xBEEF,
	      "shared page readable by the VMM", "read %#llx",
	      (unsigned long long)value);
	check(!try_read(code, &value), "private page is SIGBUS", "read %#llx",
	      (unsigned long long)value);
	check(ioctl(v.fd, PKVM_RS_RUN, 0) == 0 &&
	      v.run->exit_reason == PKVM_RS_EXIT_HVC && v.run->hvc_args[1] == 0,
	      "guest MEM_UNSHARE", "exit %llu result %#llx",
	      (unsigned long long)v.run->exit_reason,
	      (unsigned long long)v.run->hvc_args[1]);
	check(!try_read(shared, &value), "unshared page is SIGBUS again",
	      "read %#llx", (unsigned long long)value);
	check(ioctl(v.fd, PKVM_RS_RUN, 0) == 0 &&
	      v.run->exit_reason == PKVM_RS_EXIT_SYSTEM_EVENT,
	      "share guest powers off", "exit %llu",
	      (unsigned long long)v.run->exit_reason);
out:
	if (shared != MAP_FAILED)
		munmap((void *)shared, PAGE);
	if (code != MAP_FAILED)
		munmap((void *)code, PAGE);
	if (v.run != MAP_FAILED)
		munmap(v.run, PAGE);
	close(v.fd);
	close(vm);
	expect_nothing_held("shared VM: every page back");
	munmap(mem, GUEST_PAGES * PAGE);
}

struct runner {
	struct vcpu v;
	const char *why;
	double wall, cpu;
};

static void *run_main(void *arg)
{
	struct runner *r = arg;

	r->why = drive_main(&r->v, 0, &r->wall, &r->cpu);
	return NULL;
}

/* Two vCPUs of one VM on two threads, and two VMs at once. */
static void test_two_vcpus_two_vms(void)
{
	char *mem[2];
	struct runner r[2][2];
	pthread_t t[2][2];
	int vm[2], i, j, ok = 1;

	for (i = 0; i < 2; i++) {
		mem[i] = guest_memory(guest_main, guest_main_end);
		vm[i] = create_vm(0);
		if (vm[i] < 0 || set_memory(vm[i], mem[i], 0)) {
			check(0, "two VMs", "VM %d: errno %d", i, errno);
			return;
		}
		for (j = 0; j < 2; j++) {
			r[i][j].v = create_vcpu(vm[i], GUEST_BASE,
						GUEST_BASE + (DATA_PAGE + j) * PAGE);
			r[i][j].why = "not run";
			if (r[i][j].v.fd < 0 || r[i][j].v.run == MAP_FAILED) {
				check(0, "two vCPUs", "errno %d", errno);
				return;
			}
		}
	}
	for (i = 0; i < 2; i++)
		for (j = 0; j < 2; j++)
			pthread_create(&t[i][j], NULL, run_main, &r[i][j]);
	for (i = 0; i < 2; i++)
		for (j = 0; j < 2; j++) {
			uint64_t *data = (uint64_t *)(mem[i] + (DATA_PAGE + j) * PAGE);

			pthread_join(t[i][j], NULL);
			if (r[i][j].why || data[0] != 84 || data[1] != 0x1234) {
				printf("  VM %d vCPU %d: %s, answer %llu\n", i, j,
				       r[i][j].why ? r[i][j].why : "ok",
				       (unsigned long long)data[0]);
				ok = 0;
			}
		}
	check(ok, "two VMs of two vCPUs on four threads", "see above");
	for (i = 0; i < 2; i++) {
		for (j = 0; j < 2; j++) {
			munmap(r[i][j].v.run, PAGE);
			close(r[i][j].v.fd);
		}
		close(vm[i]);
		munmap(mem[i], GUEST_PAGES * PAGE);
	}
	expect_nothing_held("two VMs: every page back");
}

struct waiter {
	struct vcpu v;
	long ret;
	int err;
};

static void *run_once(void *arg)
{
	struct waiter *w = arg;

	w->ret = ioctl(w->v.fd, PKVM_RS_RUN, 0);
	w->err = errno;
	return NULL;
}

static void on_usr1(int sig)
{
	(void)sig;
}

/* A vCPU asleep in WFI: a kick wakes it, a signal interrupts it, and two
 * runs of one vCPU at once are refused. */
static void test_kick_and_signal(void)
{
	char *mem = guest_memory(guest_wait, guest_wait_end);
	volatile uint64_t *flag = (uint64_t *)(mem + DATA_PAGE * PAGE);
	struct sigaction sa = { .sa_handler = on_usr1 };
	struct waiter w;
	pthread_t t;
	int vm;

	sigaction(SIGUSR1, &sa, NULL);
	vm = create_vm(0);
	if (vm < 0 || set_memory(vm, mem, 0)) {
		check(0, "kick VM", "errno %d", errno);
		return;
	}
	w.v = create_vcpu(vm, GUEST_BASE, GUEST_BASE + DATA_PAGE * PAGE);
	if (w.v.fd < 0 || w.v.run == MAP_FAILED) {
		check(0, "kick vCPU", "errno %d", errno);
		return;
	}

	/* A signal ends the sleep with EINTR. */
	pthread_create(&t, NULL, run_once, &w);
	usleep(200000);
	expect_errno(ioctl(w.v.fd, PKVM_RS_RUN, 0), EBUSY,
		     "second run of a running vCPU");
	pthread_kill(t, SIGUSR1);
	pthread_join(t, NULL);
	check(w.ret == -1 && w.err == EINTR, "signal interrupts WFI sleep",
	      "ret %ld errno %d", w.ret, w.err);

	/* The guest sleeps until the VMM sets the flag and kicks. */
	pthread_create(&t, NULL, run_once, &w);
	usleep(200000);
	*flag = 1;
	__sync_synchronize();
	check(ioctl(vm, PKVM_RS_KICK_VCPU, 0) == 0, "kick", "errno %d", errno);
	pthread_join(t, NULL);
	check(w.ret == 0 && w.v.run->exit_reason == PKVM_RS_EXIT_SYSTEM_EVENT,
	      "kick wakes a sleeping vCPU", "ret %ld errno %d exit %llu", w.ret,
	      w.err, (unsigned long long)w.v.run->exit_reason);
	munmap(w.v.run, PAGE);
	close(w.v.fd);
	close(vm);
	expect_nothing_held("kicked VM: every page back");
	munmap(mem, GUEST_PAGES * PAGE);
}

/* Racing close: the VM's and the vCPU's files are closed (and the run
 * page unmapped) while another thread runs the vCPU. The run goes on, a
 * signal ends it, and only then is the VM torn down. */
static void test_close_while_running(void)
{
	char *mem = guest_memory(guest_spin, guest_spin_end);
	struct sigaction sa = { .sa_handler = on_usr1 };
	struct waiter w;
	pthread_t t;
	int vm;

	sigaction(SIGUSR1, &sa, NULL);
	vm = create_vm(0);
	if (vm < 0 || set_memory(vm, mem, 0)) {
		check(0, "close while running", "errno %d", errno);
		return;
	}
	w.v = create_vcpu(vm, GUEST_BASE, 0);
	if (w.v.fd < 0 || w.v.run == MAP_FAILED) {
		check(0, "close while running", "errno %d", errno);
		return;
	}
	pthread_create(&t, NULL, run_once, &w);
	usleep(100000);
	munmap(w.v.run, PAGE);
	close(w.v.fd);
	close(vm);
	usleep(100000);
	check(stats().vms == 1, "VM lives while a closed vCPU runs",
	      "VMs %llu", (unsigned long long)stats().vms);
	pthread_kill(t, SIGUSR1);
	pthread_join(t, NULL);
	check(w.ret == -1 && w.err == EINTR, "run of a closed vCPU ends on a signal",
	      "ret %ld errno %d", w.ret, w.err);
	expect_nothing_held("closed while running: every page back");
	munmap(mem, GUEST_PAGES * PAGE);
}

/* A VMM child killed with SIGKILL while its vCPU runs (spinning, or asleep
 * in WFI): nothing stays held. */
static void test_sigkill(const char *name, const char *code, const char *end,
			 int protected)
{
	int pipefd[2];
	pid_t pid;
	char c;

	if (pipe(pipefd))
		return;
	pid = fork();
	if (pid == 0) {
		char *mem = guest_memory(code, end);
		int vm = create_vm(protected ? PKVM_RS_VM_PROTECTED : 0);
		struct vcpu v;

		close(pipefd[0]);
		if (vm < 0 || set_memory(vm, mem, protected ? PAGE : 0))
			_exit(1);
		v = create_vcpu(vm, GUEST_BASE, GUEST_BASE + DATA_PAGE * PAGE);
		if (v.fd < 0 || v.run == MAP_FAILED)
			_exit(1);
		if (write(pipefd[1], "r", 1) != 1)
			_exit(1);
		for (;;)
			ioctl(v.fd, PKVM_RS_RUN, 0);
	}
	close(pipefd[1]);
	if (read(pipefd[0], &c, 1) != 1) {
		check(0, name, "the child could not start its VM");
		waitpid(pid, NULL, 0);
		close(pipefd[0]);
		return;
	}
	close(pipefd[0]);
	usleep(300000);
	check(stats().vms == 1, "VM alive before SIGKILL", "no VM while the child runs");
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	expect_nothing_held(name);
}

/* VMMs killed at random points: while creating the VM, setting memory,
 * creating vCPUs, running a normal or a protected guest. */
static void test_random_kills(int rounds)
{
	struct pkvm_rs_stats s;
	int i, bad = 0;

	srand(time(NULL));
	for (i = 0; i < rounds; i++) {
		int protected = i & 1;
		pid_t pid = fork();

		if (pid == 0) {
			char *mem = guest_memory(guest_main, guest_main_end);
			int vm = create_vm(protected ? PKVM_RS_VM_PROTECTED : 0);
			struct vcpu v[2];
			int j;

			if (vm < 0 || set_memory(vm, mem, protected ? PAGE : 0))
				_exit(1);
			for (j = 0; j < 2; j++)
				v[j] = create_vcpu(vm, GUEST_BASE,
						   (GUEST_BASE + (DATA_PAGE + j) * PAGE) |
						   protected);
			for (;;)
				for (j = 0; j < 2; j++)
					if (v[j].fd >= 0 && v[j].run != MAP_FAILED)
						ioctl(v[j].fd, PKVM_RS_RUN, 0);
		}
		usleep(rand() % 40000);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		for (int k = 0; k < 200; k++) {
			s = stats();
			if (!s.pages_allocated && !s.pages_pinned && !s.vms)
				break;
			usleep(10000);
		}
		if (s.pages_allocated || s.pages_pinned || s.vms || s.pages_leaked) {
			printf("  kill %d: allocated %llu pinned %llu VMs %llu leaked %llu\n",
			       i, (unsigned long long)s.pages_allocated,
			       (unsigned long long)s.pages_pinned,
			       (unsigned long long)s.vms,
			       (unsigned long long)s.pages_leaked);
			bad++;
		}
	}
	check(!bad, "VMMs killed at random points leave nothing held",
	      "%d of %d", bad, rounds);
}

/* Free memory in KiB: MemFree plus the free pages waiting in the per-CPU
 * lists (/proc/zoneinfo's pageset counts), which MemFree leaves out and
 * which grow with the CPU count; caches dropped first. */
static long mem_free_kib(void)
{
	char line[128];
	long kib = -1, count, pcp = 0;
	FILE *f;
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);

	if (fd >= 0) {
		if (write(fd, "3", 1) != 1)
			perror("drop_caches");
		close(fd);
	}
	f = fopen("/proc/meminfo", "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemFree: %ld kB", &kib) == 1)
			break;
	if (f)
		fclose(f);
	f = fopen("/proc/zoneinfo", "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, " count: %ld", &count) == 1)
			pcp += count;
	if (f)
		fclose(f);
	return kib < 0 ? -1 : kib + pcp * (long)(PAGE / 1024);
}

/* A VM of 32 MiB: while it lives free memory is down by about that much
 * (a protected VM's pages are the driver's, a normal VM's are the VMM's,
 * pinned); once it is closed (and the VMM's buffer unmapped) free memory
 * is back within 1 MiB (the kernel's own noise, about 200 KiB seen,
 * per-CPU lists counted). A leak of the VM's memory would show 32 times
 * over. */
static void test_free_memory(int protected)
{
	const size_t size = 32UL << 20;
	const char *name = protected ? "free memory returns after a 32 MiB protected VM"
				     : "free memory returns after a 32 MiB normal VM";
	struct pkvm_rs_memory m = { .guest_phys = GUEST_BASE, .size = size };
	long before, during, after;
	char *buf;
	int vm;

	before = mem_free_kib();
	buf = mmap(NULL, size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	vm = create_vm(protected ? PKVM_RS_VM_PROTECTED : 0);
	if (buf == MAP_FAILED || vm < 0) {
		check(0, name, "errno %d", errno);
		return;
	}
	memset(buf, 0x5a, size);
	m.userspace_addr = (uintptr_t)buf;
	m.image_size = protected ? size : 0;
	if (ioctl(vm, PKVM_RS_SET_MEMORY, &m)) {
		check(0, name, "SET_MEMORY: errno %d", errno);
		close(vm);
		munmap(buf, size);
		return;
	}
	during = mem_free_kib();
	close(vm);
	munmap(buf, size);
	expect_nothing_held(protected ? "32 MiB protected VM: every page back"
				      : "32 MiB normal VM: every page back");
	/* Freeing can lag (per-CPU lists, deferred work): wait up to 3 s for
	 * it; a leak never comes back. */
	for (int i = 0; i < 30; i++) {
		after = mem_free_kib();
		if (after > before - 1024)
			break;
		usleep(100000);
	}
	printf("driver-test: free %ld KiB, %ld KiB with the %s VM, %ld KiB after\n",
	       before, during, protected ? "protected" : "normal", after);
	check(before > 0 && during < before - (long)(size >> 10) + 8192 &&
	      after > before - 1024, name, "free %ld KiB, %ld, %ld", before,
	      during, after);
}

static void all_tests(void)
{
	test_device();
	test_normal_vm();
	test_protected_vm();
	test_protected_share();
	test_two_vcpus_two_vms();
	test_kick_and_signal();
	test_close_while_running();
	test_sigkill("SIGKILL of a VMM whose guest spins", guest_spin,
		     guest_spin_end, 0);
	test_sigkill("SIGKILL of a VMM whose guest sleeps in WFI", guest_wait,
		     guest_wait_end, 0);
	test_sigkill("SIGKILL of a VMM running a protected guest", guest_spin,
		     guest_spin_end, 1);
	test_random_kills(40);
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	dev = open("/dev/pkvm-rs", O_RDWR | O_CLOEXEC);
	check(dev >= 0, "open /dev/pkvm-rs", "errno %d", errno);
	if (dev >= 0) {
		all_tests();
		test_random_kills(80);
		test_free_memory(0);
		test_free_memory(1);
	}
	printf("driver-test: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
