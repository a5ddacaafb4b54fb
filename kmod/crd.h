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

#define CRD_ABI_VERSION 1

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

struct crd_restart {
	__u32 size;		/* sizeof(struct crd_restart) */
	__s32 fd;		/* the CRF image, open for reading */
	__s32 notify_pid;	/* with CRD_RESTART_NOTIFY: who gets SIGUSR1; 0 = the parent */
	__u32 flags;		/* CRD_RESTART_* above */
	__u64 reason;		/* as in crd_checkpoint */
	__u32 reason_len;
	__u32 pad;
};

#define CRD_IOC_MAGIC	0xCD
/* Returns CRD_ABI_VERSION. */
#define CRD_VERSION	_IO(CRD_IOC_MAGIC, 0)
/* Checkpoints a process into a file descriptor; returns 0. */
#define CRD_CHECKPOINT	_IOWR(CRD_IOC_MAGIC, 1, struct crd_checkpoint)
/* Replaces the caller with a process from an image (not in this version: ENOTTY). */
#define CRD_RESTART	_IOW(CRD_IOC_MAGIC, 2, struct crd_restart)

#endif /* _CRD_H */
