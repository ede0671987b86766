/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR MIT */
/*
 * pkvm-rs host driver: the userspace API of /dev/pkvm-rs.
 *
 * The one source of the ioctl layout: VMMs mirror these structures and
 * check the mirror with static asserts. docs/DRIVER.md describes every
 * ioctl, its errors and the lifetime of what it creates.
 *
 * Three kinds of file:
 *  - /dev/pkvm-rs: the system (version, features, page counts, VM creation);
 *  - a VM file, from PKVM_RS_CREATE_VM: memory and vCPUs of one VM; closing
 *    it (and every vCPU file) destroys the VM and gives back its pages;
 *  - a vCPU file, from PKVM_RS_CREATE_VCPU: mmap()ed at offset 0 it is the
 *    vCPU's run page (struct pkvm_rs_run); PKVM_RS_RUN runs it.
 *
 * Only the two page-inspection ioctls (PKVM_RS_PAGE_QUERY and
 * PKVM_RS_GUEST_PAGE, for tests and diagnostics on a root-only device)
 * take or return a physical frame number; nothing else does.
 */
#ifndef _UAPI_PKVM_RS_H
#define _UAPI_PKVM_RS_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* The version of this API (PKVM_RS_GET_VERSION.api_version). */
#define PKVM_RS_API_VERSION 1

#define PKVM_RS_IOCTL_TYPE 0xB7

/* /dev/pkvm-rs, PKVM_RS_GET_VERSION. */
struct pkvm_rs_version {
	__u32 api_version;	/* PKVM_RS_API_VERSION */
	__u32 hyp_version;	/* HYP_VERSION: major << 16 | minor */
	__u64 hyp_features;	/* HYP_FEATURES bits (PKVM_RS_FEAT_*) */
	__u32 max_vms;		/* HYP_FEATURES x3 */
	__u32 max_vcpus;	/* HYP_FEATURES x4: vCPUs per VM */
};

#define PKVM_RS_FEAT_FWB		(1ULL << 0)
#define PKVM_RS_FEAT_DIC		(1ULL << 1)
#define PKVM_RS_FEAT_IDC		(1ULL << 2)
#define PKVM_RS_FEAT_MTE		(1ULL << 3)
#define PKVM_RS_FEAT_CACHEABLE_DEVICE	(1ULL << 4)

/* /dev/pkvm-rs, PKVM_RS_GET_STATS: what the driver holds right now. */
struct pkvm_rs_stats {
	__u64 pages_allocated;	/* pages the driver allocated (pools, run
				 * pages, protected guest memory), all VMs */
	__u64 pages_pinned;	/* VMM pages pinned into normal VMs */
	__u64 pages_leaked;	/* pages the hypervisor did not give back
				 * (never freed; 0 unless something is wrong) */
	__u64 vms;		/* live VMs */
	__u64 pages_not_zeroed;	/* pages the hypervisor gave back (RECLAIM)
				 * holding non-zero bytes, since the module
				 * was loaded (freed anyway; 0 unless the
				 * hypervisor failed to scrub) */
};

/*
 * /dev/pkvm-rs, PKVM_RS_PAGE_QUERY: the hypervisor's PAGE_QUERY of the
 * frame `pfn` (in). VM file, PKVM_RS_GUEST_PAGE: `ipa` (in) is a guest
 * address of this protected VM whose page the driver donated; `pfn` (out)
 * is that page's frame, and the rest its PAGE_QUERY. The driver never
 * touches the page itself. owner/host_state/mem_class are ABI.md's
 * PAGE_QUERY values (owner 0 host, 1 hypervisor, 2 a guest, 3 none; host
 * state 0 OWNED, 1 SHARED_OWNED, 2 SHARED_BORROWED, 3 NOPAGE).
 */
struct pkvm_rs_page_info {
	__u64 ipa;		/* PKVM_RS_GUEST_PAGE: in */
	__u64 pfn;		/* PKVM_RS_PAGE_QUERY: in; GUEST_PAGE: out */
	__u32 owner;		/* out */
	__u32 host_state;	/* out */
	__u32 mem_class;	/* out */
	__u32 reserved;		/* 0 */
};

/* /dev/pkvm-rs, PKVM_RS_CREATE_VM: returns a new VM file descriptor. */
struct pkvm_rs_create_vm {
	__u64 flags;		/* PKVM_RS_VM_* */
};

#define PKVM_RS_VM_PROTECTED	(1ULL << 0)
#define PKVM_RS_VM_MTE		(1ULL << 1)

/*
 * VM file, PKVM_RS_SET_MEMORY: give the guest memory at guest_phys.
 *
 * Normal VM: [userspace_addr, +size) is the VMM's own memory; the driver
 * pins it and shares it into the guest, where the VMM keeps seeing it.
 * image_size must be 0.
 *
 * Protected VM: the driver allocates the pages. The first image_size bytes
 * are copied from userspace_addr (the initial image) and donated at once;
 * the rest of the region is donated page by page, zeroed, when the guest
 * first touches it (a MEM_FAULT that PKVM_RS_RUN handles itself). The VMM
 * loses access to all of it.
 *
 * guest_phys, size and userspace_addr are page aligned; size > 0; regions
 * of one VM do not overlap.
 */
struct pkvm_rs_memory {
	__u64 guest_phys;
	__u64 size;
	__u64 userspace_addr;
	__u64 image_size;
	__u64 prot;		/* PKVM_RS_PROT_* (R required); 0 means RWX */
};

#define PKVM_RS_PROT_R		(1ULL << 0)
#define PKVM_RS_PROT_W		(1ULL << 1)
#define PKVM_RS_PROT_X		(1ULL << 2)

/*
 * The run page: struct pkvm_rs_run, the hypervisor's layout (ABI.md,
 * host-interface/src/run_page.rs). "in": the VMM writes it before
 * PKVM_RS_RUN; "out": valid after PKVM_RS_RUN returns.
 */
struct pkvm_rs_run {
	__u64 entry;		/* in: first PC (IPA), read at the first run */
	__u64 x0;		/* in: x0 at the first run */
	__u64 exit_reason;	/* out: PKVM_RS_EXIT_* */
	__u64 fault_ipa;	/* out: MMIO, MEM_FAULT */
	__u64 fault_flags;	/* out: PKVM_RS_FAULT_* */
	__u64 fault_size;	/* out: 1, 2, 4 or 8 */
	__u64 fault_esr;	/* out: ESR_EL2 (normal VMs) */
	__u64 fault_data;	/* out: write data */
	__u64 mmio_read_data;	/* in: completes an MMIO read */
	__u64 hvc_args[7];	/* out: x0..x6 of a forwarded guest call */
	__u64 hvc_results[4];	/* in: x0..x3 answering it */
	__u64 system_event;	/* out: PKVM_RS_SYSTEM_EVENT_* */
	__u64 inject_irq;	/* in: PKVM_RS_IRQ_VALID | INTID */
	__u64 timer_deadline;	/* out: guest timer, counter ticks */
	__u64 kick_vcpus;	/* out: vCPUs this run sent an SGI to */
	__u64 reserved[488];
};

#define PKVM_RS_EXIT_MMIO		1
#define PKVM_RS_EXIT_MEM_FAULT		2
#define PKVM_RS_EXIT_HVC		3
#define PKVM_RS_EXIT_SYSTEM_EVENT	4
#define PKVM_RS_EXIT_INTERRUPTED	5
#define PKVM_RS_EXIT_WFI		6
#define PKVM_RS_EXIT_FATAL		7

#define PKVM_RS_FAULT_WRITE		(1ULL << 0)
#define PKVM_RS_FAULT_EXEC		(1ULL << 1)
#define PKVM_RS_FAULT_SYNDROME_VALID	(1ULL << 2)

#define PKVM_RS_SYSTEM_EVENT_OFF	0
#define PKVM_RS_SYSTEM_EVENT_RESET	1

#define PKVM_RS_IRQ_VALID		(1ULL << 31)
#define PKVM_RS_IRQ_INTID_MASK		0x3FFULL

#define PKVM_RS_RUN_PAGE_SIZE		4096

/* /dev/pkvm-rs */
#define PKVM_RS_GET_VERSION	_IOR(PKVM_RS_IOCTL_TYPE, 0x00, struct pkvm_rs_version)
#define PKVM_RS_GET_STATS	_IOR(PKVM_RS_IOCTL_TYPE, 0x01, struct pkvm_rs_stats)
#define PKVM_RS_CREATE_VM	_IOW(PKVM_RS_IOCTL_TYPE, 0x02, struct pkvm_rs_create_vm)
#define PKVM_RS_PAGE_QUERY	_IOWR(PKVM_RS_IOCTL_TYPE, 0x03, struct pkvm_rs_page_info)

/* VM file */
#define PKVM_RS_SET_MEMORY	_IOW(PKVM_RS_IOCTL_TYPE, 0x10, struct pkvm_rs_memory)
/* Returns a vCPU file descriptor; vCPUs are numbered 0, 1, ... in order. */
#define PKVM_RS_CREATE_VCPU	_IO(PKVM_RS_IOCTL_TYPE, 0x11)
/* Wakes vCPU `arg` (an index) from a WFI sleep, or makes its current run
 * end early so that it sees a new inject_irq. */
#define PKVM_RS_KICK_VCPU	_IO(PKVM_RS_IOCTL_TYPE, 0x12)
/* Protected VMs: the frame and PAGE_QUERY of a donated guest page. */
#define PKVM_RS_GUEST_PAGE	_IOWR(PKVM_RS_IOCTL_TYPE, 0x13, struct pkvm_rs_page_info)

/* vCPU file: run until an exit the VMM must handle; 0 and the exit in the
 * run page, or -1 with errno (EINTR: a signal is pending). */
#define PKVM_RS_RUN		_IO(PKVM_RS_IOCTL_TYPE, 0x20)

#endif /* _UAPI_PKVM_RS_H */
