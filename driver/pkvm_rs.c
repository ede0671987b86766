// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * pkvm-rs host driver: /dev/pkvm-rs, the host kernel's side of the
 * pkvm-rs hypercall ABI (shared/spec/ABI.md), for VMMs in userspace.
 *
 * The driver owns every page it gives the hypervisor: VM pools, run pages
 * and protected guest memory are allocated here, counted, and freed only
 * after RECLAIM (or UNSHARE_HYP) gave them back. A normal VM's memory is
 * the VMM's own, pinned while the VM lives. Userspace never names a
 * physical address. docs/DRIVER.md describes the ioctls.
 */
#include <linux/anon_inodes.h>
#include <linux/arm-smccc.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/hrtimer.h>
#include <linux/list.h>
#include <linux/math64.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#include <linux/wait.h>
#include <linux/xarray.h>
#include <asm/arch_timer.h>

#include "include/uapi/pkvm_rs.h"

/* Host calls: ABI.md section 1. */
#define HC(n)			(0xC6000100UL + (n))
#define HC_HYP_VERSION		HC(0x00)
#define HC_HYP_FEATURES		HC(0x01)
#define HC_PAGE_QUERY		HC(0x02)
#define HC_SHARE_HYP		HC(0x10)
#define HC_UNSHARE_HYP		HC(0x11)
#define HC_VM_CREATE		HC(0x20)
#define HC_VM_TOPUP		HC(0x21)
#define HC_VCPU_CREATE		HC(0x22)
#define HC_VCPU_RUN		HC(0x23)
#define HC_VM_DESTROY		HC(0x24)
#define HC_RECLAIM		HC(0x25)
#define HC_GUEST_SHARE		HC(0x30)
#define HC_GUEST_UNSHARE	HC(0x31)
#define HC_GUEST_DONATE		HC(0x32)

/* PAGE_QUERY host state: the host may touch a page a guest shared. */
#define HOST_SHARED_BORROWED	2

/* Pages per call at most (ABI.md: nr is 1..=512). */
#define HC_MAX_PAGES		512
/* The guest IPA space (ABI.md: 40 bits). */
#define IPA_BITS		40
/* VM_CREATE: 16 pages (root tables, aligned pairs included, and a pool). */
#define CREATE_ORDER		4
/* VM_TOPUP: 4 pages at a time, on -ENOMEM. */
#define TOPUP_ORDER		2
/*
 * Pool pages kept for the guest's own calls: MMIO_GUARD of a device page
 * may need stage-2 table pages, and the hypervisor cannot ask the host
 * for more from inside a guest call (it answers INVALID_PARAMETER, and
 * Linux warns). Device pages of one VM span a few 2 MiB blocks: a table
 * page each, and one for their 1 GiB block.
 */
#define GUEST_CALL_RESERVE	16
/* Top-ups one call may need before it gives up. */
#define TOPUP_TRIES		8
/* Largest region: 4 GiB. */
#define MAX_REGION_PAGES	(1UL << 20)
/* vCPUs per VM this driver tracks (the hypervisor's limit is lower). */
#define MAX_VCPUS		64

static struct pkvm_rs_version hyp_info;
static atomic64_t pages_allocated = ATOMIC64_INIT(0);
static atomic64_t pages_pinned = ATOMIC64_INIT(0);
static atomic64_t pages_leaked = ATOMIC64_INIT(0);
static atomic64_t live_vms = ATOMIC64_INIT(0);
static atomic64_t pages_not_zeroed = ATOMIC64_INIT(0);

struct chunk {
	struct list_head node;
	struct page *page;
	unsigned int order;
};

struct region {
	struct list_head node;
	u64 gfn;
	u64 nr;
	u64 prot;
	bool protected;
	struct page **pinned;	/* normal VMs: the VMM's pages */
	u64 shared;		/* normal VMs: pages GUEST_SHAREd so far */
};

struct vm;

struct vcpu {
	struct vm *vm;
	struct file *vm_file;	/* held by the vCPU's file */
	u64 index;
	struct page *run_page;
	struct pkvm_rs_run *run;
	struct mutex run_lock;	/* one PKVM_RS_RUN at a time */
	wait_queue_head_t wq;
	atomic_t kicked;
	int cpu;		/* physical CPU in VCPU_RUN, or -1 */
};

struct vm {
	struct mutex lock;	/* regions, vCPUs, pool, donations */
	u64 handle;
	bool protected;
	struct list_head pool;
	struct list_head regions;
	struct xarray donated;	/* gfn -> struct page *, protected memory */
	struct vcpu *vcpus[MAX_VCPUS];
	unsigned int nr_vcpus;
};

/* One host call: SMCCC 1.1, every unused argument register zero. */
static long hyp_call(unsigned long id, u64 a1, u64 a2, u64 a3, u64 a4,
		     u64 a5, struct arm_smccc_res *res)
{
	arm_smccc_1_1_hvc(id, a1, a2, a3, a4, a5, 0, res);
	if (res->a0 != 0)
		return -EOPNOTSUPP;
	return (long)res->a1;
}

static struct page *alloc_counted(unsigned int order)
{
	struct page *p = alloc_pages(GFP_KERNEL | __GFP_ZERO, order);

	if (p)
		atomic64_add(1UL << order, &pages_allocated);
	return p;
}

static void free_counted(struct page *p, unsigned int order)
{
	__free_pages(p, order);
	atomic64_sub(1UL << order, &pages_allocated);
}

/*
 * A page the hypervisor just gave back (RECLAIM): ABI.md says it scrubbed
 * it. Check, count each page that is not all zero, and free it anyway
 * (it is the host's again; nothing of the guest should be in it).
 */
static void free_reclaimed(struct page *p, unsigned int order)
{
	unsigned long i;

	for (i = 0; i < (1UL << order); i++)
		if (memchr_inv(page_address(p + i), 0, PAGE_SIZE)) {
			pr_err("pkvm_rs: reclaimed page at pfn %#lx is not zeroed\n",
			       page_to_pfn(p + i));
			atomic64_inc(&pages_not_zeroed);
		}
	free_counted(p, order);
}

/* A page the hypervisor would not give back: never touched again. */
static void leak(struct page *p, unsigned int order, const char *why, long err)
{
	pr_err("pkvm_rs: leaking %u page(s) at pfn %#lx: %s: %ld\n",
	       1U << order, page_to_pfn(p), why, err);
	atomic64_sub(1UL << order, &pages_allocated);
	atomic64_add(1UL << order, &pages_leaked);
}

static int vm_topup(struct vm *vm)
{
	struct arm_smccc_res res;
	struct chunk *c;
	long err;

	c = kzalloc(sizeof(*c), GFP_KERNEL);
	if (!c)
		return -ENOMEM;
	c->order = TOPUP_ORDER;
	c->page = alloc_counted(c->order);
	if (!c->page) {
		kfree(c);
		return -ENOMEM;
	}
	err = hyp_call(HC_VM_TOPUP, vm->handle, page_to_pfn(c->page),
		       1UL << c->order, 0, 0, &res);
	if (err) {
		free_counted(c->page, c->order);
		kfree(c);
		return err;
	}
	list_add(&c->node, &vm->pool);
	return 0;
}

/* VM_TOPUP of at least `pages` pages, TOPUP_ORDER at a time. */
static int vm_topup_pages(struct vm *vm, u64 pages)
{
	u64 done;
	int err;

	for (done = 0; done < pages; done += 1UL << TOPUP_ORDER) {
		err = vm_topup(vm);
		if (err)
			return err;
	}
	return 0;
}

/* A host call on a VM that may need pool pages: top up and retry. */
static long vm_call(struct vm *vm, unsigned long id, u64 a2, u64 a3, u64 a4,
		    u64 a5, struct arm_smccc_res *res)
{
	int tries;
	long err;

	for (tries = 0; tries <= TOPUP_TRIES; tries++) {
		err = hyp_call(id, vm->handle, a2, a3, a4, a5, res);
		if (err != -ENOMEM)
			return err;
		err = vm_topup(vm);
		if (err)
			return err;
	}
	return -ENOMEM;
}

/*
 * Everything after the last reference: VM_DESTROY, then every page back
 * (run pages by UNSHARE_HYP, pools and donations by RECLAIM) and freed,
 * the VMM's pages unpinned.
 */
static void vm_teardown(struct vm *vm)
{
	struct arm_smccc_res res;
	struct region *r, *rn;
	struct chunk *c, *cn;
	struct page *p;
	unsigned long gfn;
	unsigned int i;
	long err;

	/* If VM_DESTROY fails nothing can come back: every page leaks. */
	err = hyp_call(HC_VM_DESTROY, vm->handle, 0, 0, 0, 0, &res);
	if (err)
		pr_err("pkvm_rs: VM_DESTROY of VM %llu: %ld\n", vm->handle, err);
	for (i = 0; i < vm->nr_vcpus; i++) {
		struct vcpu *v = vm->vcpus[i];
		long e = err ? err : hyp_call(HC_UNSHARE_HYP,
					      page_to_pfn(v->run_page), 1, 0,
					      0, 0, &res);

		if (e)
			leak(v->run_page, 0, "run page", e);
		else
			free_counted(v->run_page, 0);
		kfree(v);
	}
	list_for_each_entry_safe(c, cn, &vm->pool, node) {
		long e = err ? err : hyp_call(HC_RECLAIM, page_to_pfn(c->page),
					      1UL << c->order, 0, 0, 0, &res);
		if (e)
			leak(c->page, c->order, "pool", e);
		else
			free_reclaimed(c->page, c->order);
		list_del(&c->node);
		kfree(c);
	}
	xa_for_each(&vm->donated, gfn, p) {
		long e = err ? err : hyp_call(HC_RECLAIM, page_to_pfn(p), 1,
					      0, 0, 0, &res);
		if (e)
			leak(p, 0, "guest page", e);
		else
			free_reclaimed(p, 0);
	}
	xa_destroy(&vm->donated);
	list_for_each_entry_safe(r, rn, &vm->regions, node) {
		if (r->pinned) {
			/* VM_DESTROY dropped the guest's shares. */
			unpin_user_pages_dirty_lock(r->pinned, r->nr, true);
			atomic64_sub(r->nr, &pages_pinned);
			kvfree(r->pinned);
		}
		list_del(&r->node);
		kfree(r);
	}
	atomic64_dec(&live_vms);
	kfree(vm);
}

static struct region *find_region(struct vm *vm, u64 gfn)
{
	struct region *r;

	list_for_each_entry(r, &vm->regions, node)
		if (gfn >= r->gfn && gfn < r->gfn + r->nr)
			return r;
	return NULL;
}

/* Allocate, fill and donate one page of a protected region at gfn. */
static long donate_page(struct vm *vm, struct region *r, u64 gfn,
			const void __user *src, size_t len)
{
	struct arm_smccc_res res;
	struct page *p;
	long err;

	p = alloc_counted(0);
	if (!p)
		return -ENOMEM;
	if (len && copy_from_user(page_address(p), src, len)) {
		free_counted(p, 0);
		return -EFAULT;
	}
	err = xa_insert(&vm->donated, gfn, p, GFP_KERNEL);
	if (err) {
		free_counted(p, 0);
		return err;
	}
	err = vm_call(vm, HC_GUEST_DONATE, page_to_pfn(p), gfn, 1, r->prot,
		      &res);
	if (err) {
		xa_erase(&vm->donated, gfn);
		free_counted(p, 0);
	}
	return err;
}

static long set_memory(struct vm *vm, struct pkvm_rs_memory __user *argp)
{
	struct pkvm_rs_memory m;
	struct arm_smccc_res res;
	struct region *r, *o;
	u64 i, nr;
	long err, pinned = 0;

	if (copy_from_user(&m, argp, sizeof(m)))
		return -EFAULT;
	if (!m.prot)
		m.prot = PKVM_RS_PROT_R | PKVM_RS_PROT_W | PKVM_RS_PROT_X;
	if (!m.size || !PAGE_ALIGNED(m.size) || !PAGE_ALIGNED(m.guest_phys) ||
	    !PAGE_ALIGNED(m.userspace_addr) ||
	    !(m.prot & PKVM_RS_PROT_R) ||
	    (m.prot & ~(PKVM_RS_PROT_R | PKVM_RS_PROT_W | PKVM_RS_PROT_X)))
		return -EINVAL;
	nr = m.size >> PAGE_SHIFT;
	if (nr > MAX_REGION_PAGES || m.guest_phys >= (1ULL << IPA_BITS) ||
	    m.size > (1ULL << IPA_BITS) - m.guest_phys)
		return -EINVAL;
	if (vm->protected ? m.image_size > m.size : m.image_size != 0)
		return -EINVAL;
	if (!access_ok((void __user *)(unsigned long)m.userspace_addr,
		       vm->protected ? m.image_size : m.size))
		return -EFAULT;

	r = kzalloc(sizeof(*r), GFP_KERNEL);
	if (!r)
		return -ENOMEM;
	r->gfn = m.guest_phys >> PAGE_SHIFT;
	r->nr = nr;
	r->prot = m.prot;
	r->protected = vm->protected;

	mutex_lock(&vm->lock);
	list_for_each_entry(o, &vm->regions, node) {
		if (r->gfn < o->gfn + o->nr && o->gfn < r->gfn + r->nr) {
			err = -EEXIST;
			goto out_free;
		}
	}
	if (vm->protected) {
		/* The image now; the rest on the guest's first touch. */
		list_add(&r->node, &vm->regions);
		for (i = 0; i * PAGE_SIZE < m.image_size; i++) {
			size_t len = min_t(u64, PAGE_SIZE,
					   m.image_size - i * PAGE_SIZE);

			err = donate_page(vm, r, r->gfn + i,
					  (void __user *)(unsigned long)
					  (m.userspace_addr + i * PAGE_SIZE),
					  len);
			if (err) {
				/* What was donated stays with the VM. */
				list_del(&r->node);
				kfree(r);
				goto out;
			}
		}
		/*
		 * The tables the rest of the region will need as the guest
		 * touches it (one per 2 MiB, a few above), so that those
		 * donations never eat the guest-call reserve. Best effort:
		 * without it a guest call may fail, nothing else does.
		 */
		vm_topup_pages(vm, (nr - i) / 512 + 4 + GUEST_CALL_RESERVE);
		err = 0;
		goto out;
	}

	r->pinned = kvcalloc(nr, sizeof(*r->pinned), GFP_KERNEL);
	if (!r->pinned) {
		err = -ENOMEM;
		goto out_free;
	}
	pinned = pin_user_pages_fast(m.userspace_addr, nr,
				     FOLL_WRITE | FOLL_LONGTERM, r->pinned);
	if (pinned < 0) {
		err = pinned;
		goto out_pages;
	}
	atomic64_add(pinned, &pages_pinned);
	if (pinned != nr) {
		err = -EFAULT;
		goto out_unpin;
	}
	for (i = 0; i < nr; i++) {
		err = vm_call(vm, HC_GUEST_SHARE, page_to_pfn(r->pinned[i]),
			      r->gfn + i, 1, r->prot, &res);
		if (err)
			goto out_unshare;
		r->shared++;
	}
	list_add(&r->node, &vm->regions);
	/* Best effort: without the reserve a guest call may fail. */
	vm_topup_pages(vm, GUEST_CALL_RESERVE);
	mutex_unlock(&vm->lock);
	return 0;

out_unshare:
	for (i = 0; i < r->shared; i += HC_MAX_PAGES) {
		u64 n = min_t(u64, HC_MAX_PAGES, r->shared - i);
		long e = hyp_call(HC_GUEST_UNSHARE, vm->handle, r->gfn + i, n,
				  0, 0, &res);

		if (e) {
			/* Still shared: keep the pins for the VM's teardown. */
			pr_err("pkvm_rs: GUEST_UNSHARE: %ld\n", e);
			r->nr = r->shared;
			list_add(&r->node, &vm->regions);
			mutex_unlock(&vm->lock);
			return err;
		}
	}
out_unpin:
	unpin_user_pages(r->pinned, pinned);
	atomic64_sub(pinned, &pages_pinned);
out_pages:
	kvfree(r->pinned);
out_free:
	kfree(r);
out:
	mutex_unlock(&vm->lock);
	return err;
}

/*
 * A first touch donates the aligned group of 1 << DONATE_GROUP_ORDER pages
 * around it (64 KiB) in one GUEST_DONATE, when the group lies in the region
 * and none of it is donated yet. A guest touches its memory mostly in
 * order (its page tables, memmap, zeroing), so this spares most MEM_FAULT
 * exits and hypercalls; a protected VM's memory is the guest's anyway, the
 * rest of the group is only given a little early.
 */
#define DONATE_GROUP_ORDER	4

static long donate_group(struct vm *vm, struct region *r, u64 gfn)
{
	u64 n = 1UL << DONATE_GROUP_ORDER, base = round_down(gfn, n), i, j;
	struct arm_smccc_res res;
	struct page *p;
	long err;

	if (base < r->gfn || base + n > r->gfn + r->nr)
		return -ERANGE;
	for (i = 0; i < n; i++)
		if (xa_load(&vm->donated, base + i))
			return -EEXIST;
	p = alloc_pages(GFP_KERNEL | __GFP_ZERO | __GFP_NOWARN,
			DONATE_GROUP_ORDER);
	if (!p)
		return -ENOMEM;
	atomic64_add(n, &pages_allocated);
	/* Each page is reclaimed and freed on its own at teardown. */
	split_page(p, DONATE_GROUP_ORDER);
	for (i = 0; i < n; i++) {
		err = xa_insert(&vm->donated, base + i, p + i, GFP_KERNEL);
		if (err)
			goto undo;
	}
	err = vm_call(vm, HC_GUEST_DONATE, page_to_pfn(p), base, n, r->prot,
		      &res);
	if (!err)
		return 0;
undo:
	for (j = 0; j < i; j++)
		xa_erase(&vm->donated, base + j);
	for (j = 0; j < n; j++)
		free_counted(p + j, 0);
	return err;
}

/*
 * Protected memory the guest touched for the first time: donate its group,
 * or the page alone when the group cannot go (partly donated, past the
 * region's end, no contiguous memory, or the hypervisor refused). A page
 * already donated was given while this vCPU was on its way here (another
 * vCPU's fault in the same group, or on the same page): it is mapped now,
 * so the vCPU only has to run again.
 */
static bool handle_mem_fault(struct vm *vm, u64 ipa)
{
	u64 gfn = ipa >> PAGE_SHIFT;
	struct region *r;
	bool handled = false;

	if (!vm->protected)
		return false;
	mutex_lock(&vm->lock);
	r = find_region(vm, gfn);
	if (r && r->protected)
		handled = xa_load(&vm->donated, gfn) ||
			  donate_group(vm, r, gfn) == 0 ||
			  donate_page(vm, r, gfn, NULL, 0) == 0;
	mutex_unlock(&vm->lock);
	return handled;
}

static void kick_ipi(void *unused)
{
}

/* Wake a vCPU sleeping in WFI, or end its current run early. */
static void kick(struct vcpu *v)
{
	int cpu;

	atomic_set(&v->kicked, 1);
	wake_up_interruptible(&v->wq);
	cpu = READ_ONCE(v->cpu);
	if (cpu >= 0 && cpu != raw_smp_processor_id())
		smp_call_function_single(cpu, kick_ipi, NULL, 0);
}

/* The guest is idle: sleep until its timer, an interrupt to inject, a kick
 * or a signal. */
/*
 * After a WFI exit: sleep until the run page's timer deadline, a kick, or a
 * new interrupt request. `declined` is the inject_irq the run started with:
 * if it is still there, the hypervisor did not take it (it takes every
 * request of a powered vCPU, so this vCPU is powered off and waits for the
 * guest's CPU_ON, whose kick wakes it), and it is no reason to run again.
 */
static long wfi_sleep(struct vcpu *v, u64 declined)
{
	u64 deadline = READ_ONCE(v->run->timer_deadline);
	u64 irq = READ_ONCE(v->run->inject_irq);
	u64 now, rate, ticks;
	ktime_t timeout;
	long ret;

	if (atomic_xchg(&v->kicked, 0) || (irq && irq != declined))
		return 0;
	if (deadline == U64_MAX)
		return wait_event_interruptible(v->wq,
						atomic_xchg(&v->kicked, 0));
	now = arch_timer_read_counter();
	if (deadline <= now)
		return 0;
	rate = arch_timer_get_cntfrq();
	ticks = deadline - now;
	/* Round up: waking early only costs another WFI exit. */
	timeout = ns_to_ktime(mul_u64_u64_div_u64(ticks, NSEC_PER_SEC, rate) + 1);
	ret = wait_event_interruptible_hrtimeout(v->wq,
						 atomic_xchg(&v->kicked, 0),
						 timeout);
	return ret == -ETIME ? 0 : ret;
}

static long vcpu_run(struct vcpu *v)
{
	struct vm *vm = v->vm;
	struct arm_smccc_res res;
	u64 exit, kicks, request;
	long err;
	int i;

	if (!mutex_trylock(&v->run_lock))
		return -EBUSY;
	for (;;) {
		if (signal_pending(current)) {
			err = -EINTR;
			break;
		}
		preempt_disable();
		WRITE_ONCE(v->cpu, smp_processor_id());
		request = READ_ONCE(v->run->inject_irq);
		err = hyp_call(HC_VCPU_RUN, vm->handle, v->index, 0, 0, 0, &res);
		WRITE_ONCE(v->cpu, -1);
		preempt_enable();
		if (err)
			break;
		exit = res.a2;
		if (exit == PKVM_RS_EXIT_INTERRUPTED) {
			kicks = READ_ONCE(v->run->kick_vcpus);
			for (i = 0; i < MAX_VCPUS && kicks; i++, kicks >>= 1)
				if ((kicks & 1) &&
				    i < smp_load_acquire(&vm->nr_vcpus))
					kick(vm->vcpus[i]);
			cond_resched();
			continue;
		}
		if (exit == PKVM_RS_EXIT_WFI) {
			err = wfi_sleep(v, request);
			if (err) {
				err = -EINTR;
				break;
			}
			/*
			 * wfi_sleep() returns at once while an inject_irq the
			 * hypervisor has not taken waits in the run page (or
			 * the deadline passed): let the scheduler (and RCU)
			 * in before the next run.
			 */
			cond_resched();
			continue;
		}
		if (exit == PKVM_RS_EXIT_MEM_FAULT &&
		    handle_mem_fault(vm, READ_ONCE(v->run->fault_ipa))) {
			/*
			 * A protected guest zeroing its memory faults page
			 * after page: without this the loop can hold the CPU
			 * for seconds (an RCU stall on a non-preemptible host).
			 */
			cond_resched();
			continue;
		}
		/* MMIO, HVC, SYSTEM_EVENT, FATAL, MEM_FAULT: the VMM's. */
		err = 0;
		break;
	}
	mutex_unlock(&v->run_lock);
	return err;
}

static long vcpu_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	struct vcpu *v = f->private_data;

	switch (cmd) {
	case PKVM_RS_RUN:
		if (arg)
			return -EINVAL;
		return vcpu_run(v);
	default:
		return -ENOTTY;
	}
}

static int vcpu_mmap(struct file *f, struct vm_area_struct *vma)
{
	struct vcpu *v = f->private_data;

	if (vma->vm_pgoff != 0 ||
	    vma->vm_end - vma->vm_start != PKVM_RS_RUN_PAGE_SIZE ||
	    !(vma->vm_flags & VM_SHARED))
		return -EINVAL;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_set(vma, VM_DONTEXPAND | VM_DONTDUMP);
#else
	vma->vm_flags |= VM_DONTEXPAND | VM_DONTDUMP;
#endif
	return vm_insert_page(vma, vma->vm_start, v->run_page);
}

static int vcpu_release(struct inode *inode, struct file *f)
{
	struct vcpu *v = f->private_data;

	/* The vCPU itself lives until the VM's teardown. */
	fput(v->vm_file);
	return 0;
}

static const struct file_operations vcpu_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = vcpu_ioctl,
	.mmap = vcpu_mmap,
	.release = vcpu_release,
	.llseek = noop_llseek,
};

static long create_vcpu(struct file *vm_file, struct vm *vm)
{
	struct arm_smccc_res res;
	struct vcpu *v;
	long err;
	int fd;

	v = kzalloc(sizeof(*v), GFP_KERNEL);
	if (!v)
		return -ENOMEM;
	v->vm = vm;
	v->cpu = -1;
	mutex_init(&v->run_lock);
	init_waitqueue_head(&v->wq);
	atomic_set(&v->kicked, 0);

	mutex_lock(&vm->lock);
	if (vm->nr_vcpus >= MAX_VCPUS || vm->nr_vcpus >= hyp_info.max_vcpus) {
		err = -ENOSPC;
		goto out_free;
	}
	v->run_page = alloc_counted(0);
	if (!v->run_page) {
		err = -ENOMEM;
		goto out_free;
	}
	v->run = page_address(v->run_page);
	err = hyp_call(HC_SHARE_HYP, page_to_pfn(v->run_page), 1, 0, 0, 0,
		       &res);
	if (err)
		goto out_page;
	err = vm_call(vm, HC_VCPU_CREATE, page_to_pfn(v->run_page), 0, 0, 0,
		      &res);
	if (err) {
		long e = hyp_call(HC_UNSHARE_HYP, page_to_pfn(v->run_page), 1,
				  0, 0, 0, &res);
		if (e) {
			leak(v->run_page, 0, "run page", e);
			kfree(v);
			mutex_unlock(&vm->lock);
			return err;
		}
		goto out_page;
	}
	v->index = res.a2;
	/* From here the vCPU belongs to the VM, whatever happens to its fd. */
	vm->vcpus[vm->nr_vcpus] = v;
	/* Published after the pointer: vcpu_run() reads without the lock. */
	smp_store_release(&vm->nr_vcpus, vm->nr_vcpus + 1);
	mutex_unlock(&vm->lock);

	get_file(vm_file);
	v->vm_file = vm_file;
	fd = anon_inode_getfd("pkvm-rs-vcpu", &vcpu_fops, v, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		fput(vm_file);
	return fd;

out_page:
	free_counted(v->run_page, 0);
out_free:
	mutex_unlock(&vm->lock);
	kfree(v);
	return err;
}

/* PAGE_QUERY of `pfn` into `info`; the hypervisor's error otherwise. */
static long page_query(u64 pfn, struct pkvm_rs_page_info *info)
{
	struct arm_smccc_1_2_regs args = { .a0 = HC_PAGE_QUERY, .a1 = pfn }, out;

	arm_smccc_1_2_hvc(&args, &out);
	if (out.a0 != 0)
		return -EOPNOTSUPP;
	if (out.a1 != 0)
		return (long)out.a1;
	info->pfn = pfn;
	info->owner = out.a2;
	info->host_state = out.a3;
	info->mem_class = out.a4;
	info->reserved = 0;
	return 0;
}

/*
 * PKVM_RS_GUEST_PAGE: where a protected guest's page is and who holds it.
 * Only PAGE_QUERY: the page itself is never touched, since a kernel access
 * to a page a guest owns is an external abort.
 */
static long guest_page(struct vm *vm, struct pkvm_rs_page_info __user *argp)
{
	struct pkvm_rs_page_info info;
	struct page *p;
	long err;

	if (copy_from_user(&info, argp, sizeof(info)))
		return -EFAULT;
	if (!vm->protected)
		return -ENODEV;
	if (info.ipa >= (1ULL << IPA_BITS))
		return -EINVAL;
	/* The xarray is safe to read without vm->lock (see vm_mem_fault). */
	p = xa_load(&vm->donated, info.ipa >> PAGE_SHIFT);
	if (!p)
		return -ENOENT;
	err = page_query(page_to_pfn(p), &info);
	if (err)
		return err;
	return copy_to_user(argp, &info, sizeof(info)) ? -EFAULT : 0;
}

static long vm_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	struct vm *vm = f->private_data;
	struct vcpu *v;

	switch (cmd) {
	case PKVM_RS_SET_MEMORY:
		return set_memory(vm, (void __user *)arg);
	case PKVM_RS_CREATE_VCPU:
		if (arg)
			return -EINVAL;
		return create_vcpu(f, vm);
	case PKVM_RS_KICK_VCPU:
		mutex_lock(&vm->lock);
		v = arg < vm->nr_vcpus ? vm->vcpus[arg] : NULL;
		if (v)
			kick(v);
		mutex_unlock(&vm->lock);
		return v ? 0 : -ENOENT;
	case PKVM_RS_GUEST_PAGE:
		return guest_page(vm, (void __user *)arg);
	default:
		return -ENOTTY;
	}
}

/*
 * A VMM's view of a protected guest's memory: a page the guest shared with
 * MEM_SHARE maps; any other page is SIGBUS. The mapping holds the VM file,
 * so no page is reclaimed under it. Should the guest unshare a page later,
 * the VMM's next access takes the abort the hypervisor injects: SIGBUS too.
 */
static vm_fault_t vm_mem_fault(struct vm_fault *vmf)
{
	struct vm *vm = vmf->vma->vm_file->private_data;
	struct arm_smccc_1_2_regs args = { .a0 = HC_PAGE_QUERY }, out;
	vm_fault_t ret = VM_FAULT_SIGBUS;
	struct page *p;

	/*
	 * No vm->lock here: SET_MEMORY holds it across copy_from_user(),
	 * which may fault under mmap_lock. The xarray is safe to read, and a
	 * page leaves it early only when its donation failed, when the host
	 * still owns it and PAGE_QUERY says so.
	 */
	p = xa_load(&vm->donated, vmf->pgoff);
	if (p) {
		args.a1 = page_to_pfn(p);
		arm_smccc_1_2_hvc(&args, &out);
		if (out.a0 == 0 && out.a1 == 0 && out.a3 == HOST_SHARED_BORROWED)
			ret = vmf_insert_pfn(vmf->vma, vmf->address,
					     page_to_pfn(p));
	}
	return ret;
}

static const struct vm_operations_struct vm_mem_ops = {
	.fault = vm_mem_fault,
};

static int vm_file_mmap(struct file *f, struct vm_area_struct *vma)
{
	struct vm *vm = f->private_data;

	/* A normal VM's memory is the VMM's own already. */
	if (!vm->protected)
		return -ENODEV;
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_set(vma, VM_PFNMAP | VM_IO | VM_DONTEXPAND | VM_DONTDUMP);
#else
	vma->vm_flags |= VM_PFNMAP | VM_IO | VM_DONTEXPAND | VM_DONTDUMP;
#endif
	vma->vm_ops = &vm_mem_ops;
	return 0;
}

static int vm_release(struct inode *inode, struct file *f)
{
	vm_teardown(f->private_data);
	return 0;
}

static const struct file_operations vm_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = vm_ioctl,
	.mmap = vm_file_mmap,
	.release = vm_release,
	.llseek = noop_llseek,
};

static long create_vm(struct pkvm_rs_create_vm __user *argp)
{
	struct pkvm_rs_create_vm c;
	struct arm_smccc_res res;
	struct chunk *first;
	struct vm *vm;
	long err;
	int fd;

	if (copy_from_user(&c, argp, sizeof(c)))
		return -EFAULT;
	if (c.flags & ~(PKVM_RS_VM_PROTECTED | PKVM_RS_VM_MTE))
		return -EINVAL;
	if ((c.flags & PKVM_RS_VM_MTE) &&
	    !(hyp_info.hyp_features & PKVM_RS_FEAT_MTE))
		return -EINVAL;
	vm = kzalloc(sizeof(*vm), GFP_KERNEL);
	first = kzalloc(sizeof(*first), GFP_KERNEL);
	if (!vm || !first) {
		err = -ENOMEM;
		goto out_free;
	}
	mutex_init(&vm->lock);
	INIT_LIST_HEAD(&vm->pool);
	INIT_LIST_HEAD(&vm->regions);
	xa_init(&vm->donated);
	vm->protected = c.flags & PKVM_RS_VM_PROTECTED;
	first->order = CREATE_ORDER;
	first->page = alloc_counted(first->order);
	if (!first->page) {
		err = -ENOMEM;
		goto out_free;
	}
	err = hyp_call(HC_VM_CREATE, c.flags, page_to_pfn(first->page),
		       1UL << first->order, 0, 0, &res);
	if (err) {
		free_counted(first->page, first->order);
		goto out_free;
	}
	vm->handle = res.a2;
	list_add(&first->node, &vm->pool);
	atomic64_inc(&live_vms);
	fd = anon_inode_getfd("pkvm-rs-vm", &vm_fops, vm, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		vm_teardown(vm);
	return fd;

out_free:
	kfree(first);
	kfree(vm);
	return err;
}

static long dev_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	void __user *argp = (void __user *)arg;
	struct pkvm_rs_page_info info;
	struct pkvm_rs_stats s;
	long err;

	switch (cmd) {
	case PKVM_RS_GET_VERSION:
		return copy_to_user(argp, &hyp_info, sizeof(hyp_info)) ?
			-EFAULT : 0;
	case PKVM_RS_GET_STATS:
		s.pages_allocated = atomic64_read(&pages_allocated);
		s.pages_pinned = atomic64_read(&pages_pinned);
		s.pages_leaked = atomic64_read(&pages_leaked);
		s.vms = atomic64_read(&live_vms);
		s.pages_not_zeroed = atomic64_read(&pages_not_zeroed);
		return copy_to_user(argp, &s, sizeof(s)) ? -EFAULT : 0;
	case PKVM_RS_PAGE_QUERY:
		if (copy_from_user(&info, argp, sizeof(info)))
			return -EFAULT;
		err = page_query(info.pfn, &info);
		if (err)
			return err;
		return copy_to_user(argp, &info, sizeof(info)) ? -EFAULT : 0;
	case PKVM_RS_CREATE_VM:
		return create_vm(argp);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations dev_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = dev_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice pkvm_rs_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "pkvm-rs",
	.fops = &dev_fops,
	.mode = 0600,
};

static int __init pkvm_rs_init(void)
{
	struct arm_smccc_1_2_regs args = { .a0 = HC_HYP_FEATURES }, out;
	struct arm_smccc_res res;
	long err;

	err = hyp_call(HC_HYP_VERSION, 0, 0, 0, 0, 0, &res);
	if (err) {
		pr_err("pkvm_rs: no pkvm-rs hypervisor (HYP_VERSION: %ld)\n",
		       err);
		return -ENODEV;
	}
	hyp_info.api_version = PKVM_RS_API_VERSION;
	hyp_info.hyp_version = res.a2;
	/* HYP_FEATURES answers in x2..x4: the SMCCC 1.2 helper reads x4. */
	arm_smccc_1_2_hvc(&args, &out);
	if (out.a0 != 0 || out.a1 != 0) {
		pr_err("pkvm_rs: HYP_FEATURES: %ld\n", (long)out.a1);
		return -ENODEV;
	}
	hyp_info.hyp_features = out.a2;
	hyp_info.max_vms = out.a3;
	hyp_info.max_vcpus = out.a4;
	err = misc_register(&pkvm_rs_dev);
	if (err)
		return err;
	pr_info("pkvm_rs: hypervisor %u.%u, features %#llx, %u VMs of %u vCPUs\n",
		hyp_info.hyp_version >> 16, hyp_info.hyp_version & 0xffff,
		hyp_info.hyp_features, hyp_info.max_vms, hyp_info.max_vcpus);
	return 0;
}

static void __exit pkvm_rs_exit(void)
{
	misc_deregister(&pkvm_rs_dev);
}

module_init(pkvm_rs_init);
module_exit(pkvm_rs_exit);
MODULE_LICENSE("Dual MIT/GPL");
MODULE_DESCRIPTION("pkvm-rs host driver: VMs and vCPUs for userspace VMMs");
