/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * crd.h: the ABI of /dev/crd, the crs kernel backend (kmod/crd.c). src/dev/mod.rs mirrors it;
 * tests/crd_abi.rs checks that the two agree.
 *
 * Every argument struct starts with its own size, set by the caller to sizeof the struct it was
 * built with: the module accepts a shorter (older) struct, and a longer one whose extra bytes are
 * zero (copy_struct_from_user), so fields can be added at the end without new ioctl numbers. The
 * module dispatches on the ioctl's type and number only, not on the size encoded in it.
 */
#ifndef _CRD_H
#define _CRD_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define CRD_ABI_VERSION 2

/* crd_checkpoint.flags: the paper's CRS_KILL, CRS_NO_BINARY_FILE, CRS_NO_SHARED_LIBRARIES, and a
 * stop flag; the same bits as the CKPT_* flags of a CRF image's HEAD. */
#define CRD_KILL		1	/* kill the process once its image is written */
#define CRD_NO_BINARY_FILE	2	/* do not copy the executable's unmodified pages */
#define CRD_NO_SHARED_LIBRARIES	4	/* nor those of the other ELF files it maps */
#define CRD_STOP		8	/* leave it stopped (SIGSTOP) once its image is written */

struct crd_checkpoint {
	__u32 size;		/* sizeof(struct crd_checkpoint) */
	__s32 fd;		/* where the CRF image goes: a file, pipe or socket open for writing */
	__s32 pid;		/* the process, in the caller's pid namespace */
	__u32 flags;		/* CRD_* above */
	__u64 reason;		/* user address of a buffer for a one-line reason on failure, or 0 */
	__u32 reason_len;	/* its size in bytes */
	__u32 pad;		/* zero */
	__u64 bytes;		/* out: bytes of image written */
	__u64 pages;		/* out: pages of memory in it */
};

/* crd_restart.flags */
#define CRD_RESTART_NOTIFY	1	/* send SIGUSR1 to notify_pid once restarted */
#define CRD_RESTART_STOP	2	/* restarted, stop (SIGSTOP) before running */
#define CRD_RESTART_EXE		4	/* exe_map's file becomes the process's executable */

/*
 * A restart replaces the calling process's address space and registers with an image's. The
 * caller (crs rstrt) has read and checked the whole image with the one CRF codec, set up what
 * user space can (credentials, fds 0-2, cwd, limits, signal handlers, alternate stack, tid
 * address, robust list; every signal blocked; the vdso moved to the image's place) and loaded
 * the image's FPU state (XRSTOR) just before the ioctl; it hands the module a plan: the
 * mappings, where each run of pages lies in the image file, the memory layout, the registers
 * and the signal mask. The module unmaps everything but the vdso and vvar, makes the mappings,
 * reads the pages from the image, sets the layout, closes every fd above 2, and the process
 * returns to user space as the image's, with the image's mask. Past the first unmap, a failure
 * kills the process: it is never half-run.
 */
struct crd_map {
	__u64 start;		/* page aligned */
	__u64 end;
	__u32 prot;		/* PROT_READ | PROT_WRITE | PROT_EXEC */
	__u32 flags;		/* MAP_PRIVATE or MAP_SHARED, MAP_GROWSDOWN, MAP_NORESERVE */
	__s32 fd;		/* the file mapped, or -1 for anonymous memory */
	__u32 pad;
	__u64 pgoff;		/* in pages */
};

struct crd_run {
	__u64 addr;		/* page aligned, inside one private mapping */
	__u64 len;		/* bytes, a multiple of the page size */
	__u64 offset;		/* where the bytes are in the image file */
};

struct crd_restart {
	__u32 size;		/* sizeof(struct crd_restart) */
	__s32 fd;		/* the CRF image: a file (pread), open for reading */
	__s32 notify_pid;	/* with CRD_RESTART_NOTIFY: who gets SIGUSR1; 0 = the parent */
	__u32 flags;		/* CRD_RESTART_* above */
	__u64 reason;		/* as in crd_checkpoint */
	__u32 reason_len;
	__u32 nmaps;		/* the plan: */
	__u64 maps;		/* user address of nmaps struct crd_map, in address order */
	__u64 runs;		/* user address of nruns struct crd_run, in address order */
	__u32 nruns;
	__u32 pad;
	__u64 mm[11];		/* start_code .. env_end, as in the image's MMSTRUCT */
	__u64 auxv[64];		/* the auxiliary vector, up to and with AT_NULL */
	__u64 regs[27];		/* struct user_regs_struct: what the process resumes with */
	__u64 sigmask;		/* its blocked signals */
	__u64 rseq;		/* its rseq area, 0 for none */
	__u32 rseq_len;
	__u32 rseq_sig;
	__u32 dumpable;		/* PR_SET_DUMPABLE, set once it is the image's process */
	__u32 exe_map;		/* with CRD_RESTART_EXE: the index in maps of the mapping whose
				 * file becomes /proc/PID/exe (a regular file the caller may
				 * execute, as execve would take it) */
};

#define CRD_IOC_MAGIC	0xCD
/* Returns CRD_ABI_VERSION. */
#define CRD_VERSION	_IO(CRD_IOC_MAGIC, 0)
/* Checkpoints a process into a file descriptor; returns 0. */
#define CRD_CHECKPOINT	_IOWR(CRD_IOC_MAGIC, 1, struct crd_checkpoint)
/* Replaces the caller with the process of an image; returns only on failure (-1, errno), and
 * then only before anything was changed. */
#define CRD_RESTART	_IOW(CRD_IOC_MAGIC, 2, struct crd_restart)

#endif /* _CRD_H */
