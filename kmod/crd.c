// SPDX-License-Identifier: GPL-2.0
/*
 * crd: the kernel backend of crs. A misc device, /dev/crd, whose CRD_CHECKPOINT ioctl writes a
 * CRF image (man/crf.5) of a process to a file descriptor without ptrace: no TracerPid, no
 * stop the process or its parent can see, and it works on a process that is already traced and
 * where ptrace is forbidden (Yama ptrace_scope=3).
 *
 * Only exported kernel interfaces are used, and only what needs the kernel is done here (the
 * paper's rule). How a checkpoint goes:
 *  - The caller's ioctl checks what ptrace would check (same ids, or CAP_SYS_PTRACE over the
 *    process; a non-dumpable process needs the capability), then queues a task_work on the
 *    process with TWA_SIGNAL: like a signal, it interrupts whatever the process is doing (an
 *    interrupted system call is restarted afterwards, as after a signal).
 *  - The process runs that work in its own context, on its way back to user mode: it takes what
 *    only it can read simply (its registers with the whole XSAVE area, through the same regsets
 *    ptrace uses; its signal handlers; its ids, limits, fds 0-2, cwd), refuses what this
 *    backend does not carry, then parks, killable, until the caller is done.
 *  - The caller walks the parked process's mappings and pages (get_user_pages_remote, as a core
 *    dump does: FOLL_DUMP skips holes and the zero page) and writes the image in its own
 *    context: a slow or broken pipe blocks or signals the caller, never the process.
 *  - Then the process runs on, is killed or stops (CRD_KILL, CRD_STOP); on any failure it runs
 *    on as it was.
 * What it does not carry (threads, fds beyond 0-2, timers, shared or deleted mappings, pending
 * signals, seccomp...) is refused with a one-line reason the caller reads back; see man/crd.4.
 *
 * CRD_RESTART is the other way: crs has read and checked the image and set up in user space all
 * it can (credentials, fds, handlers, the FPU state...); the module replaces the caller's
 * memory with the plan's mappings and pages, read from the image file, and sets its registers
 * and mask in a task_work on its way back to user mode (crd.h says what the plan holds).
 */
#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/file.h>
#include <linux/fdtable.h>
#include <linux/fs_struct.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/highmem.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/sched/coredump.h>
#include <linux/task_work.h>
#include <linux/regset.h>
#include <linux/elf.h>
#include <linux/cred.h>
#include <linux/capability.h>
#include <linux/user_namespace.h>
#include <linux/pid_namespace.h>
#include <linux/utsname.h>
#include <linux/crc32.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/kref.h>
#include <linux/completion.h>
#include <linux/seccomp.h>
#include <linux/namei.h>
#include <linux/mount.h>
#include <linux/version.h>
#include <linux/kdev_t.h>
#include <linux/delay.h>
#include <linux/uio.h>
#include <linux/hugetlb.h>
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
#include <linux/rseq.h>
#include <linux/unaligned.h>
#else
#include <asm/unaligned.h>
#endif
#include <asm/fsgsbase.h>
#include <asm/segment.h>
#include <linux/sched/task_stack.h>
#include <linux/ptrace.h>
#include <asm/unistd.h>
#include "crd.h"

static ushort mode = 0600;
module_param(mode, ushort, 0444);
MODULE_PARM_DESC(mode, "permissions of /dev/crd (default 0600: root only)");

/* CRF (man/crf.5) */
#define CRF_VERSION	2
#define EM_X86_64_	62
#define T_HEAD		1
#define T_FILES		2
#define T_MMSTRUCT	3
#define T_VMAS		4
#define T_PAGES		5
#define T_REGS		6
#define T_SIGNALS	7
#define T_TASK		8
#define T_CWD		9
#define T_THP		12
#define T_RLIMITS	13
#define T_END		0xffffffffu
#define KIND_FILE_FD	1
#define KIND_DEV_FD	3
#define KIND_STDIO_FD	4
#define VK_ANON		1
#define VK_HEAP		2
#define VK_STACK	3
#define VK_FILE		4
#define VK_VDSO		6
#define VK_VVAR		7
#define VMA_SHARED	1
#define VMA_GROWSDOWN	2
#define VMA_NORESERVE	4
#define VMA_FILE_COPY	8
#define VMA_MAY_WRITE	16
#define VMA_DONTDUMP	(1 << 8)
#define VMA_DONTFORK	(1 << 9)
#define VMA_HUGEPAGE	(1 << 10)
#define VMA_NOHUGEPAGE	(1 << 11)
#define VMA_WIPEONFORK	(1 << 12)
#define VMA_MERGEABLE	(1 << 13)
#define VMA_LOCKED	(1 << 14)
#define VMA_LOCKONFAULT	(1 << 15)
#define RUN_FILE_COPY	1
#define BATCH_PAGES	256
#define NRLIMITS	16
#define REASON_MAX	256
#define PARK_TIMEOUT	(10 * HZ)

/* What the parked process says about itself: everything but its mappings and pages. */
struct crd_ctx {
	struct kref ref;
	struct callback_head work;
	struct completion parked;	/* the process took its state (or refused) */
	struct completion release;	/* the caller is done with it */
	spinlock_t lock;
	bool abandoned;			/* the caller gave up before the process parked */
	bool killed;			/* a SIGKILL ended its wait: the image is of a dead process */
	struct mm_struct *mm;		/* the memory the caller checked (not referenced here) */
	int verdict;			/* what the process does once released: 0 run, CRD_KILL, CRD_STOP */
	int err;			/* set by the process: why it cannot be checkpointed */
	char reason[REASON_MAX];
	/* from the caller, for the process */
	struct user_namespace *user_ns;
	struct pid_namespace *pid_ns;
	/* taken by the process */
	u64 regs[27];
	void *xsave;
	int xsave_len;
	struct {
		u64 handler, flags, restorer, mask;
	} act[64];
	u64 blocked, ss_sp, ss_size;
	u32 ss_flags;
	u32 umask, personality, dumpable, pdeathsig;
	u64 rseq_ptr;
	u32 rseq_len, rseq_sig;
	u32 ids[8];
	u32 ngroups;
	u32 *groups;
	char comm[TASK_COMM_LEN];
	u64 mmv[11];
	u64 auxv[AT_VECTOR_SIZE];
	u32 auxv_words;
	bool thp_disabled;
	struct file *exe;
	struct path cwd;
	bool has_cwd;
	struct file *stdio[3];
	bool cloexec[3];
	u64 rlim[NRLIMITS][2];
	s32 pids[4];			/* pid, ppid, pgid, sid, in the caller's pid namespace */
};

static void ctx_free(struct kref *ref)
{
	struct crd_ctx *c = container_of(ref, struct crd_ctx, ref);
	int i;

	for (i = 0; i < 3; i++)
		if (c->stdio[i])
			fput(c->stdio[i]);
	if (c->exe)
		fput(c->exe);
	if (c->has_cwd)
		path_put(&c->cwd);
	kfree(c->groups);
	kvfree(c->xsave);
	put_user_ns(c->user_ns);
	put_pid_ns(c->pid_ns);
	kfree(c);
}

static void refuse(struct crd_ctx *c, int err, const char *fmt, ...)
{
	va_list ap;

	if (c->err)
		return;
	c->err = err;
	va_start(ap, fmt);
	vsnprintf(c->reason, sizeof(c->reason), fmt, ap);
	va_end(ap);
}

/* --- In the process's own context ------------------------------------------------------- */

static const struct user_regset *find_regset(const struct user_regset_view *v, unsigned int note)
{
	int i;

	for (i = 0; i < v->n; i++)
		if (v->regsets[i].core_note_type == note)
			return &v->regsets[i];
	return NULL;
}

/* Syscalls that return EINTR to a stop like ours although no handler ran: re-issued, as the
 * ptrace engine does (src/ptrace/arch.rs). */
static bool never_restarted(long nr)
{
	switch (nr) {
	case __NR_epoll_wait: case __NR_epoll_pwait: case 441: case __NR_semop:
	case __NR_semtimedop: case __NR_rt_sigtimedwait: case __NR_io_getevents:
		return true;
	}
	return false;
}

/* The registers the image holds: the interrupted system call re-issued (not through the restart
 * block, which a restored process does not have), orig_rax -1; an rseq critical section left at
 * its abort handler. Indexes are those of struct user_regs_struct. */
enum { R_R10 = 7, R_AX = 10, R_DX = 12, R_SI = 13, R_DI = 14, R_ORIG = 15, R_IP = 16, R_SP = 19 };

static void image_regs(struct crd_ctx *c)
{
	u64 *r = c->regs;
	long orig = (long)r[R_ORIG], ret = (long)r[R_AX];

	if (orig >= 0) {
		if (ret == -ERESTARTSYS || ret == -ERESTARTNOINTR || ret == -ERESTARTNOHAND ||
		    ret == -ERESTART_RESTARTBLOCK || (ret == -EINTR && never_restarted(orig))) {
			r[R_AX] = orig;
			r[R_IP] -= 2;
		}
		if (ret == -ERESTART_RESTARTBLOCK) {
			/* A relative sleep given a remaining-time pointer: sleep what is left. */
			if (orig == __NR_nanosleep && r[R_SI])
				r[R_DI] = r[R_SI];
			if (orig == __NR_clock_nanosleep && !(r[R_SI] & 1) && r[R_R10])
				r[R_DX] = r[R_R10];
		}
	}
	r[R_ORIG] = (u64)-1;
	if (current->rseq) {
		u64 cs = 0, d[4];
		void __user *p = (void __user *)current->rseq;

		if (!copy_from_user(&cs, p + 8, 8) && cs &&
		    !copy_from_user(d, (void __user *)(uintptr_t)cs, sizeof(d)) &&
		    r[R_IP] >= d[1] && r[R_IP] < d[1] + d[2])
			r[R_IP] = d[3];
	}
}

static void take_regs(struct crd_ctx *c)
{
	const struct user_regset_view *v = task_user_regset_view(current);
	const struct user_regset *gp = find_regset(v, NT_PRSTATUS);
	const struct user_regset *xs = find_regset(v, NT_X86_XSTATE);
	void *data = NULL;
	int n;

	if (!gp) {
		refuse(c, -EOPNOTSUPP, "this kernel has no general-register regset");
		return;
	}
	n = regset_get_alloc(current, gp, sizeof(c->regs), &data);
	if (n != sizeof(c->regs)) {
		kfree(data);
		refuse(c, n < 0 ? n : -EIO, "reading its registers failed (%d)", n);
		return;
	}
	memcpy(c->regs, data, sizeof(c->regs));
	kfree(data);
	image_regs(c);
	if (!xs || (xs->active && xs->active(current, xs) <= 0))
		xs = find_regset(v, NT_PRFPREG);
	if (!xs)
		return;
	n = regset_get_alloc(current, xs, xs->n * xs->size, &c->xsave);
	if (n < 0) {
		c->xsave = NULL;
		refuse(c, n, "reading its FPU state failed (%d)", n);
		return;
	}
	c->xsave_len = n;
}

static void take_signals(struct crd_ctx *c, const u64 *regs)
{
	struct sighand_struct *sh = current->sighand;
	int i;

	spin_lock_irq(&sh->siglock);
	for (i = 0; i < 64; i++) {
		struct sigaction *sa = &sh->action[i].sa;

		if (i + 1 == SIGKILL || i + 1 == SIGSTOP)
			continue;
		c->act[i].handler = (u64)(uintptr_t)sa->sa_handler;
		c->act[i].flags = sa->sa_flags;
		c->act[i].restorer = (u64)(uintptr_t)sa->sa_restorer;
		c->act[i].mask = sa->sa_mask.sig[0];
	}
	c->blocked = current->blocked.sig[0];
	if (!sigisemptyset(&current->pending.signal) || !sigisemptyset(&current->signal->shared_pending.signal))
		refuse(c, -EAGAIN, "signals are queued for it, which the crd backend does not carry (try again)");
	spin_unlock_irq(&sh->siglock);
	c->ss_sp = current->sas_ss_sp;
	c->ss_size = current->sas_ss_size;
	if (!current->sas_ss_size)
		c->ss_flags = SS_DISABLE;
	else if (regs[R_SP] - current->sas_ss_sp < current->sas_ss_size)
		c->ss_flags = SS_ONSTACK;
	c->ss_flags |= current->sas_ss_flags & SS_FLAG_BITS;
}

static bool caps_default(const struct cred *cr, bool all_root)
{
	kernel_cap_t full = CAP_FULL_SET;

	if (memcmp(&cr->cap_bset, &full, sizeof(full)) || cr->securebits)
		return false;
	if (all_root)
		return !memcmp(&cr->cap_permitted, &full, sizeof(full)) &&
		       !memcmp(&cr->cap_effective, &full, sizeof(full)) &&
		       cap_isclear(cr->cap_inheritable) && cap_isclear(cr->cap_ambient);
	return cap_isclear(cr->cap_permitted) && cap_isclear(cr->cap_effective) &&
	       cap_isclear(cr->cap_inheritable) && cap_isclear(cr->cap_ambient);
}

static void take_creds(struct crd_ctx *c)
{
	const struct cred *cr = current_cred();
	struct user_namespace *ns = c->user_ns;
	bool all_root;
	int i;

	c->ids[0] = from_kuid_munged(ns, cr->uid);
	c->ids[1] = from_kuid_munged(ns, cr->euid);
	c->ids[2] = from_kuid_munged(ns, cr->suid);
	c->ids[3] = from_kuid_munged(ns, cr->fsuid);
	c->ids[4] = from_kgid_munged(ns, cr->gid);
	c->ids[5] = from_kgid_munged(ns, cr->egid);
	c->ids[6] = from_kgid_munged(ns, cr->sgid);
	c->ids[7] = from_kgid_munged(ns, cr->fsgid);
	c->ngroups = cr->group_info->ngroups;
	c->groups = kcalloc(c->ngroups ?: 1, sizeof(u32), GFP_KERNEL);
	if (!c->groups) {
		refuse(c, -ENOMEM, "out of memory");
		return;
	}
	for (i = 0; i < c->ngroups; i++)
		c->groups[i] = from_kgid_munged(ns, cr->group_info->gid[i]);
	all_root = uid_eq(cr->uid, GLOBAL_ROOT_UID) && uid_eq(cr->euid, GLOBAL_ROOT_UID) &&
		   uid_eq(cr->suid, GLOBAL_ROOT_UID) && uid_eq(cr->fsuid, GLOBAL_ROOT_UID);
	if (!caps_default(cr, all_root))
		refuse(c, -EOPNOTSUPP, "it has capability sets or securebits other than the default, which the crd backend does not carry");
#ifdef CONFIG_SECCOMP
	if (current->seccomp.mode != SECCOMP_MODE_DISABLED)
		refuse(c, -EOPNOTSUPP, "it runs under seccomp, which the crd backend does not carry");
#endif
	if (task_no_new_privs(current))
		refuse(c, -EOPNOTSUPP, "it has no_new_privs set, which the crd backend does not carry");
}

struct fd_scan {
	struct crd_ctx *c;
	int other;	/* the first fd above 2, or -1 */
};

static int scan_fd(const void *p, struct file *f, unsigned int fd)
{
	struct fd_scan *s = (struct fd_scan *)p;

	if (fd > 2) {
		s->other = fd;
		return 1;
	}
	s->c->stdio[fd] = get_file(f);
	return 0;
}

static void take_files(struct crd_ctx *c)
{
	struct files_struct *files = current->files;
	struct fd_scan s = { .c = c, .other = -1 };
	int i;

	iterate_fd(files, 0, scan_fd, &s);
	if (s.other >= 0) {
		refuse(c, -EOPNOTSUPP, "it has fd %d open: the crd backend carries fds 0 to 2 only", s.other);
		return;
	}
	rcu_read_lock();
	for (i = 0; i < 3; i++) {
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 10, 0)
		c->cloexec[i] = c->stdio[i] && close_on_exec(i, files);
#else
		c->cloexec[i] = c->stdio[i] && close_on_exec(i, files_fdtable(files));
#endif
	}
	rcu_read_unlock();
}

static void take_mm(struct crd_ctx *c)
{
	struct mm_struct *mm = current->mm;
	struct file *exe;
	u32 n = 0;

	c->mmv[0] = mm->start_code;
	c->mmv[1] = mm->end_code;
	c->mmv[2] = mm->start_data;
	c->mmv[3] = mm->end_data;
	c->mmv[4] = mm->start_brk;
	c->mmv[5] = mm->brk;
	c->mmv[6] = mm->start_stack;
	c->mmv[7] = mm->arg_start;
	c->mmv[8] = mm->arg_end;
	c->mmv[9] = mm->env_start;
	c->mmv[10] = mm->env_end;
	/* As /proc/PID/auxv shows it: pairs up to and with AT_NULL. */
	do {
		n += 2;
	} while (n < AT_VECTOR_SIZE && mm->saved_auxv[n - 2] != 0);
	n = min_t(u32, n, 64);
	memcpy(c->auxv, mm->saved_auxv, n * sizeof(u64));
	c->auxv_words = n;
	c->thp_disabled = test_bit(MMF_DISABLE_THP, &mm->flags);
#ifdef MMF_HAS_MDWE
	if (test_bit(MMF_HAS_MDWE, &mm->flags))
		refuse(c, -EOPNOTSUPP, "it has memory-deny-write-execute set, which the crd backend does not carry");
#endif
	rcu_read_lock();
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 7, 0)
	exe = get_file_rcu(&mm->exe_file);
#else
	exe = rcu_dereference(mm->exe_file);
	if (exe && !get_file_rcu(exe))
		exe = NULL;
#endif
	rcu_read_unlock();
	c->exe = exe;
	c->dumpable = get_dumpable(mm) == SUID_DUMP_USER ? 1 : 0;
	/* Its own reference and the caller's. */
	if (atomic_read(&mm->mm_users) > 2)
		refuse(c, -EOPNOTSUPP, "its memory is shared with another process (CLONE_VM or vfork), which the crd backend does not carry (try again if not)");
}

static void take_task(struct crd_ctx *c)
{
	struct signal_struct *sig = current->signal;
	struct task_struct *me = current, *parent;
	int i;

	c->umask = current->fs->umask;
	c->personality = current->personality;
	c->pdeathsig = current->pdeath_signal;
	if (current->rseq) {
		c->rseq_ptr = (u64)(uintptr_t)current->rseq;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
		c->rseq_len = current->rseq_len;
#else
		c->rseq_len = 32;
#endif
		c->rseq_sig = current->rseq_sig;
	}
	get_task_comm(c->comm, current);
	get_fs_pwd(current->fs, &c->cwd);
	c->has_cwd = true;
	task_lock(me->group_leader);
	for (i = 0; i < NRLIMITS; i++) {
		c->rlim[i][0] = sig->rlim[i].rlim_cur == RLIM_INFINITY ? ~0ULL : sig->rlim[i].rlim_cur;
		c->rlim[i][1] = sig->rlim[i].rlim_max == RLIM_INFINITY ? ~0ULL : sig->rlim[i].rlim_max;
	}
	task_unlock(me->group_leader);
	rcu_read_lock();
	parent = rcu_dereference(me->real_parent);
	c->pids[0] = task_tgid_nr_ns(me, c->pid_ns);
	c->pids[1] = task_tgid_nr_ns(parent, c->pid_ns);
	c->pids[2] = task_pgrp_nr_ns(me, c->pid_ns);
	c->pids[3] = task_session_nr_ns(me, c->pid_ns);
	rcu_read_unlock();
	if (hrtimer_is_queued(&sig->real_timer) || sig->it[0].expires || sig->it[1].expires)
		refuse(c, -EOPNOTSUPP, "it has an interval timer armed (setitimer, alarm), which the crd backend does not carry");
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
	if (!hlist_empty(&sig->posix_timers))
#else
	if (!list_empty(&sig->posix_timers))
#endif
		refuse(c, -EOPNOTSUPP, "it has POSIX timers (timer_create), which the crd backend does not carry");
}

/* The task_work: the process takes its own state, then waits, killable, for the caller. */
static void crd_park(struct callback_head *cb)
{
	struct crd_ctx *c = container_of(cb, struct crd_ctx, work);
	bool gone;
	int verdict;

	spin_lock(&c->lock);
	gone = c->abandoned;
	spin_unlock(&c->lock);
	if (!gone && (current->flags & PF_EXITING || current->mm != c->mm)) {
		/* Exiting, or it executed a program since the caller looked at it. */
		refuse(c, -EAGAIN, "it exited or executed another program meanwhile (try again)");
		complete(&c->parked);
	} else if (!gone) {
		if (get_nr_threads(current) != 1)
			refuse(c, -EOPNOTSUPP, "it has %d threads: the crd backend checkpoints single-threaded processes only",
			       get_nr_threads(current));
		take_regs(c);
		take_signals(c, c->regs);
		take_creds(c);
		take_files(c);
		take_mm(c);
		take_task(c);
		complete(&c->parked);
		/* A SIGKILL ends the wait (and the process); the caller then fails. */
		if (wait_for_completion_killable(&c->release) != 0) {
			spin_lock(&c->lock);
			c->killed = true;
			spin_unlock(&c->lock);
		} else {
			spin_lock(&c->lock);
			verdict = c->verdict;
			spin_unlock(&c->lock);
			if (verdict == CRD_KILL)
				send_sig(SIGKILL, current, 1);
			else if (verdict == CRD_STOP)
				send_sig(SIGSTOP, current, 1);
		}
	}
	kref_put(&c->ref, ctx_free);
	module_put(THIS_MODULE);
}

/* --- In the caller's context: the image --------------------------------------------------- */

struct enc {
	u8 *b;
	size_t len, cap;
	int err;
};

static void enc_put(struct enc *e, const void *p, size_t n)
{
	if (e->err)
		return;
	if (e->len + n > e->cap) {
		size_t cap = max(e->cap * 2, e->len + n + 256);
		u8 *b = kvmalloc(cap, GFP_KERNEL);	/* kvrealloc's arguments differ across kernels */

		if (!b) {
			e->err = -ENOMEM;
			return;
		}
		if (e->len)
			memcpy(b, e->b, e->len);
		kvfree(e->b);
		e->b = b;
		e->cap = cap;
	}
	memcpy(e->b + e->len, p, n);
	e->len += n;
}

static void enc_u8(struct enc *e, u8 v) { enc_put(e, &v, 1); }
static void enc_u32(struct enc *e, u32 v) { __le32 x = cpu_to_le32(v); enc_put(e, &x, 4); }
static void enc_u64(struct enc *e, u64 v) { __le64 x = cpu_to_le64(v); enc_put(e, &x, 8); }
static void enc_bytes(struct enc *e, const void *p, u32 n) { enc_u32(e, n); enc_put(e, p, n); }
/* Well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF), as a CRF
 * str must be. */
static bool utf8_ok(const u8 *p, size_t n)
{
	size_t i = 0;

	while (i < n) {
		u8 c = p[i++];
		u32 cp;
		int k;

		if (c < 0x80)
			continue;
		if (c >= 0xc2 && c <= 0xdf) {
			k = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			k = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			k = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (n - i < k)
			return false;
		while (k--) {
			if ((p[i] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (p[i++] & 0x3f);
		}
		if ((cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff || (c == 0xe0 && cp < 0x800) ||
		    (c == 0xf0 && cp < 0x10000))
			return false;
	}
	return true;
}

static void enc_str(struct enc *e, const char *s)
{
	size_t n = strlen(s);

	if (!utf8_ok((const u8 *)s, n) && !e->err)
		e->err = -EILSEQ;
	enc_bytes(e, s, n);
}

struct out {
	struct file *file;
	loff_t pos;
	bool stream;
	u64 offset;	/* stream offset: bytes of image written */
	u64 nsections;
	u64 pages;	/* pages of memory written */
	char *path;	/* a PATH_MAX buffer for d_path */
	struct crd_ctx *c;
};

static u32 crc_of(const void *p, size_t n)
{
	return ~crc32_le(~0U, p, n);
}

static int out_write(struct out *o, const void *p, size_t n)
{
	while (n) {
		ssize_t w = kernel_write(o->file, p, n, o->stream ? NULL : &o->pos);

		if (w == -ERESTARTSYS || w == -ERESTARTNOINTR || w == -ERESTARTNOHAND)
			w = -EINTR;
		if (w < 0)
			return w;
		if (w == 0)
			return -EIO;
		p += w;
		n -= w;
		o->offset += w;
	}
	return 0;
}

static int section_header(struct out *o, u32 tag, u64 len, u32 crc)
{
	u8 h[24];

	put_unaligned_le32(tag, h);
	put_unaligned_le32(0, h + 4);
	put_unaligned_le64(len, h + 8);
	put_unaligned_le32(crc, h + 16);
	put_unaligned_le32(crc_of(h, 20), h + 20);
	o->nsections += tag != T_END;
	return out_write(o, h, 24);
}

static int section(struct out *o, u32 tag, struct enc *e)
{
	int err = e->err ?: section_header(o, tag, e->len, crc_of(e->b, e->len));

	if (!err)
		err = out_write(o, e->b, e->len);
	e->len = 0;
	return err;
}

/* The ELF NT_GNU_BUILD_ID descriptor of a file (as src/res/fileid.rs reads it); 0 bytes if none. */
static u32 build_id(struct file *f, u8 *id, u32 max)
{
	u8 eh[64], ph[56], *notes;
	u64 phoff, off, size;
	u16 phentsize, phnum, i;
	loff_t pos = 0;
	u32 got = 0;

	if (kernel_read(f, eh, sizeof(eh), &pos) != sizeof(eh) || memcmp(eh, ELFMAG, 4) || eh[4] != 2 || eh[5] != 1)
		return 0;
	phoff = get_unaligned_le64(eh + 32);
	phentsize = get_unaligned_le16(eh + 54);
	phnum = min_t(u16, get_unaligned_le16(eh + 56), 256);
	if (phentsize < 56)
		return 0;
	for (i = 0; i < phnum && !got; i++) {
		size_t p = 0;

		pos = phoff + (u64)i * phentsize;
		if (kernel_read(f, ph, sizeof(ph), &pos) != sizeof(ph) || get_unaligned_le32(ph) != PT_NOTE)
			continue;
		off = get_unaligned_le64(ph + 8);
		size = min_t(u64, get_unaligned_le64(ph + 32), 1 << 16);
		notes = kvmalloc(size, GFP_KERNEL);
		if (!notes)
			return 0;
		pos = off;
		if (kernel_read(f, notes, size, &pos) != size) {
			kvfree(notes);
			continue;
		}
		while (p + 12 <= size) {
			u32 namesz = get_unaligned_le32(notes + p), descsz = get_unaligned_le32(notes + p + 4);
			u32 type = get_unaligned_le32(notes + p + 8);
			size_t name_at = p + 12, desc_at = name_at + ALIGN((size_t)namesz, 4);

			if (desc_at + descsz > size)
				break;
			if (type == 3 && namesz == 4 && !memcmp(notes + name_at, "GNU", 4)) {
				got = min(descsz, max);
				memcpy(id, notes + desc_at, got);
				break;
			}
			p = desc_at + ALIGN((size_t)descsz, 4);
		}
		kvfree(notes);
	}
	return got;
}

static bool is_elf(struct file *f)
{
	u8 m[4];
	loff_t pos = 0;

	return kernel_read(f, m, 4, &pos) == 4 && !memcmp(m, ELFMAG, 4);
}

/* A FileId (man/crf.5) of an open file, recorded under `name`. */
static int enc_fileid(struct enc *e, struct file *f, const char *name, bool with_build_id)
{
	struct kstat st;
	u8 id[64];
	u32 idlen = 0;
	int err = vfs_getattr(&f->f_path, &st, STATX_BASIC_STATS, AT_STATX_SYNC_AS_STAT);

	if (err)
		return err;
	if (with_build_id && S_ISREG(st.mode))
		idlen = build_id(f, id, sizeof(id));
	enc_str(e, name);
	enc_u32(e, st.mode);
	enc_u64(e, st.size);
	enc_u64(e, st.mtime.tv_sec);
	enc_u64(e, st.mtime.tv_nsec);
	enc_u64(e, new_encode_dev(st.dev));
	enc_u64(e, st.ino);
	enc_u64(e, new_encode_dev(st.rdev));
	enc_bytes(e, id, idlen);
	return 0;
}

static const char *path_of(struct out *o, const struct path *p)
{
	char *s = d_path(p, o->path, PATH_MAX);

	return IS_ERR(s) ? NULL : s;
}

static void node_info(struct enc *e)
{
	struct new_utsname *u = utsname();
	char boot[40] = "";
	struct file *f = filp_open("/proc/sys/kernel/random/boot_id", O_RDONLY, 0);
	struct timespec64 now;

	if (!IS_ERR(f)) {
		loff_t pos = 0;
		ssize_t n = kernel_read(f, boot, sizeof(boot) - 1, &pos);

		boot[n > 0 ? n : 0] = 0;
		strim(boot);
		filp_close(f, NULL);
	}
	enc_str(e, u->nodename);
	enc_str(e, u->release);
	enc_str(e, boot);
	ktime_get_real_ts64(&now);
	enc_u64(e, now.tv_sec);
	enc_u32(e, now.tv_nsec);
}

static int write_head(struct out *o, struct enc *e, u32 flags)
{
	struct crd_ctx *c = o->c;
	const char *exe = "";
	int i;

	enc_u32(e, flags);
	for (i = 0; i < 4; i++)
		enc_u32(e, c->pids[i]);
	for (i = 0; i < 8; i++)
		enc_u32(e, c->ids[i]);
	enc_u32(e, c->ngroups);
	for (i = 0; i < c->ngroups; i++)
		enc_u32(e, c->groups[i]);
	enc_str(e, c->comm);
	if (c->exe)
		exe = path_of(o, &c->exe->f_path) ?: "";
	enc_str(e, exe);
	node_info(e);
	return section(o, T_HEAD, e);
}

static bool is_std_device(struct file *f, const char *path)
{
	static const char *const dev[] = { "/dev/null", "/dev/zero", "/dev/random", "/dev/urandom" };
	int i;

	if (!S_ISCHR(file_inode(f)->i_mode))
		return false;
	for (i = 0; i < ARRAY_SIZE(dev); i++)
		if (!strcmp(path, dev[i]))
			return true;
	return false;
}

/* What a restore gives the restorer's own fd for (KIND_STDIO): a terminal, a pipe, a socket. */
static bool is_stdio(struct file *f)
{
	umode_t m = file_inode(f)->i_mode;
	unsigned int major = imajor(file_inode(f));

	if (d_unlinked(f->f_path.dentry) && !S_ISFIFO(m) && !S_ISSOCK(m))
		return false;
	return S_ISFIFO(m) || S_ISSOCK(m) || (S_ISCHR(m) && (major == 4 || major == 5 || (major >= 136 && major <= 143)));
}

static int write_files(struct out *o, struct enc *e)
{
	struct crd_ctx *c = o->c;
	u32 n = 0;
	int i, err;

	for (i = 0; i < 3; i++)
		n += c->stdio[i] != NULL;
	enc_u32(e, n);
	for (i = 0; i < 3; i++) {
		struct file *f = c->stdio[i];
		const char *p;
		bool reg;

		if (!f)
			continue;
		p = path_of(o, &f->f_path);
		if (!p)
			return -ENAMETOOLONG;
		reg = S_ISREG(file_inode(f)->i_mode) && !d_unlinked(f->f_path.dentry);
		if (!reg && !is_std_device(f, p) && !is_stdio(f)) {
			refuse(c, -EOPNOTSUPP, "its fd %d is %s, which the crd backend does not carry", i, p);
			return -EOPNOTSUPP;
		}
		enc_u32(e, i);
		enc_u8(e, reg ? KIND_FILE_FD : is_std_device(f, p) ? KIND_DEV_FD : KIND_STDIO_FD);
		enc_u32(e, f->f_flags & ~O_CLOEXEC);
		enc_u8(e, c->cloexec[i]);
		if (reg || is_std_device(f, p)) {
			enc_u64(e, reg ? f->f_pos : 0);
			err = enc_fileid(e, f, p, false);
			if (err)
				return err;
		} else {
			/* The restore gives such an fd the restorer's own: only its name is kept. */
			enc_u64(e, 0);
			enc_str(e, p);
			enc_u32(e, 0);
			enc_u64(e, 0);
			enc_u64(e, 0);
			enc_u64(e, 0);
			enc_u64(e, 0);
			enc_u64(e, 0);
			enc_u64(e, 0);
			enc_u32(e, 0);
		}
	}
	return section(o, T_FILES, e);
}

static int write_mm(struct out *o, struct enc *e)
{
	struct crd_ctx *c = o->c;
	const char *p = NULL;
	bool has;
	int i, err;

	for (i = 0; i < 11; i++)
		enc_u64(e, c->mmv[i]);
	enc_u32(e, c->auxv_words * 8);
	for (i = 0; i < c->auxv_words; i++)
		enc_u64(e, c->auxv[i]);
	if (c->exe && !d_unlinked(c->exe->f_path.dentry))
		p = path_of(o, &c->exe->f_path);
	has = p != NULL;
	enc_u8(e, has);
	if (has) {
		err = enc_fileid(e, c->exe, p, true);
		if (err)
			return err;
	}
	return section(o, T_MMSTRUCT, e);
}

/* One mapping, as the parked process's mm has it (taken under mmap_read_lock). */
struct vma_rec {
	unsigned long start, end, vm_flags, pgoff;
	struct file *file;
	u8 kind;
	u32 flags;
	bool own_only;		/* private file mapping without a copy: only its copied-on-write pages */
	char name[64];		/* for the kinds with a fixed name */
};

static int vma_kind(struct crd_ctx *c, struct mm_struct *mm, struct vm_area_struct *vma, struct vma_rec *r)
{
	const char *special = NULL;

	if (vma->vm_ops && vma->vm_ops->name)
		special = vma->vm_ops->name(vma);
	if (vma->vm_start == (unsigned long)mm->context.vdso) {
		r->kind = VK_VDSO;
		strscpy(r->name, "[vdso]", sizeof(r->name));
		return 0;
	}
	if (special && !strncmp(special, "[vvar", 5)) {
		r->kind = VK_VVAR;
		strscpy(r->name, special, sizeof(r->name));
		return 0;
	}
	if (special) {
		refuse(c, -EOPNOTSUPP, "it maps %s at %#lx, which the crd backend does not carry", special, vma->vm_start);
		return -EOPNOTSUPP;
	}
	if (is_vm_hugetlb_page(vma)) {
		refuse(c, -EOPNOTSUPP, "it maps hugetlbfs pages at %#lx, which crs does not carry", vma->vm_start);
		return -EOPNOTSUPP;
	}
#ifdef VM_DROPPABLE
	if (vma->vm_flags & VM_DROPPABLE) {
		refuse(c, -EOPNOTSUPP, "it has droppable memory at %#lx, which the crd backend does not carry", vma->vm_start);
		return -EOPNOTSUPP;
	}
#endif
#ifdef VM_SHADOW_STACK
	if (vma->vm_flags & VM_SHADOW_STACK && VM_SHADOW_STACK != VM_NONE) {
		refuse(c, -EOPNOTSUPP, "it has a shadow stack at %#lx, which crs does not carry", vma->vm_start);
		return -EOPNOTSUPP;
	}
#endif
	if (vma->vm_flags & (VM_IO | VM_PFNMAP | VM_MIXEDMAP)) {
		refuse(c, -EOPNOTSUPP, "it maps a device at %#lx, which crs does not carry", vma->vm_start);
		return -EOPNOTSUPP;
	}
	if (vma->vm_file) {
		if (d_unlinked(vma->vm_file->f_path.dentry)) {
			refuse(c, -EOPNOTSUPP,
			       "it maps a deleted file, a memfd, System V or shared anonymous memory at %#lx, which the crd backend does not carry yet",
			       vma->vm_start);
			return -EOPNOTSUPP;
		}
		if (!S_ISREG(file_inode(vma->vm_file)->i_mode)) {
			refuse(c, -EOPNOTSUPP, "it maps something other than a regular file at %#lx", vma->vm_start);
			return -EOPNOTSUPP;
		}
		r->kind = VK_FILE;
		r->file = get_file(vma->vm_file);
		r->pgoff = vma->vm_pgoff;
		return 0;
	}
	if (vma->vm_flags & VM_SHARED) {
		refuse(c, -EOPNOTSUPP, "it maps shared anonymous memory at %#lx, which the crd backend does not carry yet",
		       vma->vm_start);
		return -EOPNOTSUPP;
	}
	if (vma->vm_start <= mm->brk && vma->vm_end >= mm->start_brk) {
		r->kind = VK_HEAP;
		strscpy(r->name, "[heap]", sizeof(r->name));
	} else if (vma->vm_start <= mm->start_stack && vma->vm_end >= mm->start_stack) {
		r->kind = VK_STACK;
		strscpy(r->name, "[stack]", sizeof(r->name));
	} else {
		r->kind = VK_ANON;
#ifdef CONFIG_ANON_VMA_NAME
		if (vma->anon_name)
			snprintf(r->name, sizeof(r->name), "[anon:%s]", vma->anon_name->name);
#endif
	}
	return 0;
}

static u32 vma_flags(unsigned long f)
{
	u32 v = 0;

	v |= f & VM_SHARED ? VMA_SHARED : 0;
	v |= f & VM_GROWSDOWN ? VMA_GROWSDOWN : 0;
	v |= f & VM_NORESERVE ? VMA_NORESERVE : 0;
	v |= (f & VM_SHARED) && (f & VM_MAYWRITE) ? VMA_MAY_WRITE : 0;
	v |= f & VM_DONTDUMP ? VMA_DONTDUMP : 0;
	v |= f & VM_DONTCOPY ? VMA_DONTFORK : 0;
	v |= f & VM_HUGEPAGE ? VMA_HUGEPAGE : 0;
	v |= f & VM_NOHUGEPAGE ? VMA_NOHUGEPAGE : 0;
	v |= f & VM_WIPEONFORK ? VMA_WIPEONFORK : 0;
	v |= f & VM_MERGEABLE ? VMA_MERGEABLE : 0;
	v |= f & VM_LOCKED ? VMA_LOCKED : 0;
	v |= f & VM_LOCKONFAULT ? VMA_LOCKONFAULT : 0;
	return v;
}

/* Snapshot of the mappings; *n set to their number. */
static struct vma_rec *take_vmas(struct crd_ctx *c, struct mm_struct *mm, u32 flags, int *n)
{
	struct vm_area_struct *vma;
	struct vma_rec *v;
	int i = 0, count = 0, err = 0;
	VMA_ITERATOR(vmi, mm, 0);

	mmap_read_lock(mm);
	for_each_vma(vmi, vma)
		count++;
	v = kvcalloc(count ?: 1, sizeof(*v), GFP_KERNEL);
	if (!v) {
		mmap_read_unlock(mm);
		return ERR_PTR(-ENOMEM);
	}
	vma_iter_init(&vmi, mm, 0);
	for_each_vma(vmi, vma) {
		struct vma_rec *r = &v[i];

		if (i == count)
			break;
		r->start = vma->vm_start;
		r->end = vma->vm_end;
		r->vm_flags = vma->vm_flags;
		err = vma_kind(c, mm, vma, r);
		if (err)
			break;
		/* The vdso and vvar are the restoring kernel's own, with its own flags. */
		r->flags = r->kind == VK_VDSO || r->kind == VK_VVAR ? 0 : vma_flags(vma->vm_flags);
		i++;
	}
	mmap_read_unlock(mm);
	*n = i;
	if (!err && c->exe) {
		for (i = 0; i < *n; i++) {
			struct vma_rec *r = &v[i];
			bool exe;

			if (r->kind != VK_FILE || (r->vm_flags & VM_SHARED))
				continue;
			exe = file_inode(r->file) == file_inode(c->exe);
			if ((exe && (flags & CRD_NO_BINARY_FILE)) || (!exe && (flags & CRD_NO_SHARED_LIBRARIES) && is_elf(r->file)))
				r->own_only = true;
			else
				r->flags |= VMA_FILE_COPY;
		}
	}
	if (err) {
		while (i-- > 0)
			if (v[i].file)
				fput(v[i].file);
		kvfree(v);
		return ERR_PTR(err);
	}
	return v;
}

static void put_vmas(struct vma_rec *v, int n)
{
	while (n-- > 0)
		if (v[n].file)
			fput(v[n].file);
	kvfree(v);
}

/* The page at addr of a parked process's mm, as a core dump takes it (FOLL_DUMP: a hole or the
 * zero page is no page). 1 with *pg referenced, 0 for none, or an error. mmap_read_lock held. */
static int page_of(struct mm_struct *mm, unsigned long addr, struct page **pg)
{
	long got;

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 5, 0)
	got = get_user_pages_remote(mm, addr, 1, FOLL_FORCE | FOLL_DUMP, pg, NULL);
#else
	got = get_user_pages_remote(mm, addr, 1, FOLL_FORCE | FOLL_DUMP, pg, NULL, NULL);
#endif
	if (got == 1)
		return 1;
	if (got == 0 || got == -EFAULT)
		return 0;
	return got;
}

/* Copies len bytes at addr of mm (pages that are holes read as zeros). */
static int read_remote(struct mm_struct *mm, unsigned long addr, u8 *buf, size_t len)
{
	int err = 0;

	mmap_read_lock(mm);
	while (len && !err) {
		struct page *pg;
		size_t off = addr & ~PAGE_MASK, n = min_t(size_t, len, PAGE_SIZE - off);
		int got = page_of(mm, addr & PAGE_MASK, &pg);

		if (got < 0) {
			err = got;
			break;
		}
		if (got) {
			void *k = kmap_local_page(pg);

			memcpy(buf, k + off, n);
			kunmap_local(k);
			put_page(pg);
		} else {
			memset(buf, 0, n);
		}
		buf += n;
		addr += n;
		len -= n;
	}
	mmap_read_unlock(mm);
	return err;
}

static int write_vmas(struct out *o, struct enc *e, struct mm_struct *mm, struct vma_rec *v, int n)
{
	int i, err;

	enc_u32(e, n);
	for (i = 0; i < n; i++) {
		struct vma_rec *r = &v[i];
		const char *name = r->name;
		u32 prot = (r->vm_flags & VM_READ ? PROT_READ : 0) | (r->vm_flags & VM_WRITE ? PROT_WRITE : 0) |
			   (r->vm_flags & VM_EXEC ? PROT_EXEC : 0);

		if (r->file) {
			name = path_of(o, &r->file->f_path);
			if (!name)
				return -ENAMETOOLONG;
		}
		enc_u64(e, r->start);
		enc_u64(e, r->end);
		enc_u32(e, prot);
		enc_u32(e, r->flags);
		enc_u8(e, r->kind);
		enc_u64(e, r->kind == VK_FILE ? r->pgoff : 0);
		enc_str(e, name);
		enc_u8(e, r->file != NULL);
		if (r->file) {
			err = enc_fileid(e, r->file, name, true);
			if (err)
				return err;
		}
		if (r->kind == VK_VDSO) {
			u32 len = r->end - r->start;
			void *b = kvmalloc(len, GFP_KERNEL);

			if (!b)
				return -ENOMEM;
			err = read_remote(mm, r->start, b, len);
			if (!err)
				enc_bytes(e, b, len);
			kvfree(b);
			if (err)
				return err;
		} else {
			enc_u32(e, 0);
		}
	}
	return section(o, T_VMAS, e);
}

/* One batch of pages (PAGES, man/crf.5): up to BATCH_PAGES pages, each with its run flag and
 * the mapping it lies in (a run never spans two). */
struct batch {
	unsigned long addr[BATCH_PAGES];
	u8 flag[BATCH_PAGES];
	u16 vma[BATCH_PAGES];
	int n;
	u8 runs[BATCH_PAGES * 16];
	u8 *data;
	u8 *zeros;
};

static int flush(struct out *o, struct batch *b)
{
	u8 *runs = b->runs, head[8];
	u32 nruns = 0, pad, crc;
	u64 len;
	int i, err;

	if (!b->n)
		return 0;
	for (i = 0; i < b->n; i++) {
		u8 *r;

		if (nruns && b->flag[i] == b->flag[i - 1] && b->vma[i] == b->vma[i - 1] &&
		    b->addr[i] == b->addr[i - 1] + PAGE_SIZE) {
			r = runs + (nruns - 1) * 16;
			put_unaligned_le32(get_unaligned_le32(r + 8) + 1, r + 8);
			continue;
		}
		r = runs + nruns * 16;
		put_unaligned_le64(b->addr[i], r);
		put_unaligned_le32(1, r + 8);
		put_unaligned_le32(b->flag[i], r + 12);
		nruns++;
	}
	/* The data starts at a stream offset that is a multiple of 4096. */
	pad = (4096 - (o->offset + 24 + 8 + 16 * nruns) % 4096) % 4096;
	put_unaligned_le32(nruns, head);
	put_unaligned_le32(pad, head + 4);
	len = 8 + 16 * nruns + pad + (u64)b->n * PAGE_SIZE;
	crc = crc32_le(~0U, head, 8);
	crc = crc32_le(crc, runs, 16 * nruns);
	crc = crc32_le(crc, b->zeros, pad);
	crc = ~crc32_le(crc, b->data, (size_t)b->n * PAGE_SIZE);
	o->pages += b->n;
	err = section_header(o, T_PAGES, len, crc);
	err = err ?: out_write(o, head, 8);
	err = err ?: out_write(o, runs, 16 * nruns);
	err = err ?: out_write(o, b->zeros, pad);
	err = err ?: out_write(o, b->data, (size_t)b->n * PAGE_SIZE);
	b->n = 0;
	return err;
}

/* The pages each mapping needs, in address order. */
static int write_pages(struct out *o, struct mm_struct *mm, struct vma_rec *v, int n)
{
	struct batch *b = kvzalloc(sizeof(*b), GFP_KERNEL);
	unsigned long addr = 0;
	int i = 0, err = 0;

	if (!b)
		return -ENOMEM;
	b->data = kvmalloc(BATCH_PAGES * PAGE_SIZE, GFP_KERNEL);
	b->zeros = kzalloc(PAGE_SIZE, GFP_KERNEL);
	if (!b->data || !b->zeros) {
		err = -ENOMEM;
		goto out;
	}
	for (; i < n && !err; i++) {
		struct vma_rec *r = &v[i];
		loff_t fsize = r->file ? i_size_read(file_inode(r->file)) : 0;

		if (r->kind == VK_VDSO || r->kind == VK_VVAR || (r->file && (r->vm_flags & VM_SHARED)))
			continue;
		addr = r->start;
		while (addr < r->end && !err) {
			mmap_read_lock(mm);
			while (addr < r->end && b->n < BATCH_PAGES) {
				struct page *pg;
				int got = page_of(mm, addr, &pg);
				u8 flag = 0;

				if (got < 0) {
					err = got;
					break;
				}
				if (got && r->file && !PageAnon(pg)) {
					/* An unmodified page of the file: only in a copy, and only within the file. */
					if (!(r->flags & VMA_FILE_COPY) || !(r->vm_flags & VM_READ) ||
					    ((loff_t)(r->pgoff + ((addr - r->start) >> PAGE_SHIFT)) << PAGE_SHIFT) >= fsize) {
						put_page(pg);
						got = 0;
					}
					flag = RUN_FILE_COPY;
				}
				if (got) {
					void *k = kmap_local_page(pg);

					memcpy(b->data + (size_t)b->n * PAGE_SIZE, k, PAGE_SIZE);
					kunmap_local(k);
					put_page(pg);
					b->addr[b->n] = addr;
					b->flag[b->n] = flag;
					b->vma[b->n] = i;
					b->n++;
				}
				addr += PAGE_SIZE;
			}
			mmap_read_unlock(mm);
			if (!err && b->n == BATCH_PAGES)
				err = flush(o, b);
			if (!err && fatal_signal_pending(current))
				err = -EINTR;
			cond_resched();
		}
	}
	if (!err)
		err = flush(o, b);
out:
	kvfree(b->data);
	kfree(b->zeros);
	kvfree(b);
	return err;
}

static int write_rest(struct out *o, struct enc *e)
{
	struct crd_ctx *c = o->c;
	const char *cwd;
	int i, err;

	for (i = 0; i < 27; i++)
		enc_u64(e, c->regs[i]);
	enc_bytes(e, c->xsave, c->xsave_len);
	err = section(o, T_REGS, e);
	if (err)
		return err;
	enc_u32(e, 64);
	for (i = 0; i < 64; i++) {
		enc_u64(e, c->act[i].handler);
		enc_u64(e, c->act[i].flags);
		enc_u64(e, c->act[i].restorer);
		enc_u64(e, c->act[i].mask);
	}
	enc_u64(e, c->blocked);
	enc_u64(e, c->ss_sp);
	enc_u32(e, c->ss_flags);
	enc_u64(e, c->ss_size);
	err = section(o, T_SIGNALS, e);
	if (err)
		return err;
	enc_u32(e, c->umask);
	enc_u32(e, c->personality);
	enc_u32(e, c->dumpable);
	enc_u32(e, c->pdeathsig);
	enc_u64(e, c->rseq_ptr);
	enc_u32(e, c->rseq_len);
	enc_u32(e, c->rseq_sig);
	err = section(o, T_TASK, e);
	if (err)
		return err;
	cwd = path_of(o, &c->cwd);
	if (!cwd || d_unlinked(c->cwd.dentry)) {
		refuse(c, -EOPNOTSUPP, "its working directory was deleted");
		return -EOPNOTSUPP;
	}
	enc_str(e, cwd);
	err = section(o, T_CWD, e);
	if (err)
		return err;
	if (c->thp_disabled) {
		enc_u32(e, 1);
		err = section(o, T_THP, e);
		if (err)
			return err;
	}
	enc_u32(e, NRLIMITS);
	for (i = 0; i < NRLIMITS; i++) {
		enc_u64(e, c->rlim[i][0]);
		enc_u64(e, c->rlim[i][1]);
	}
	return section(o, T_RLIMITS, e);
}

static int write_image(struct out *o, struct mm_struct *mm, u32 flags)
{
	struct enc e = { 0 };
	struct vma_rec *v;
	u8 pre[16], end[16];
	u64 at;
	int n = 0, err;

	memcpy(pre, "CRF", 4);
	put_unaligned_le32(CRF_VERSION, pre + 4);
	put_unaligned_le32(EM_X86_64_, pre + 8);
	put_unaligned_le32(crc_of(pre, 12), pre + 12);
	err = out_write(o, pre, 16);
	err = err ?: write_head(o, &e, flags);
	err = err ?: write_files(o, &e);
	err = err ?: write_mm(o, &e);
	if (err)
		goto out;
	v = take_vmas(o->c, mm, flags, &n);
	if (IS_ERR(v)) {
		err = PTR_ERR(v);
		goto out;
	}
	err = write_vmas(o, &e, mm, v, n);
	err = err ?: write_pages(o, mm, v, n);
	put_vmas(v, n);
	err = err ?: write_rest(o, &e);
	if (err)
		goto out;
	at = o->offset;
	put_unaligned_le64(o->nsections, end);
	put_unaligned_le64(at, end + 8);
	err = section_header(o, T_END, 16, crc_of(end, 16));
	err = err ?: out_write(o, end, 16);
out:
	kvfree(e.b);
	return err;
}

/* --- The ioctls --------------------------------------------------------------------------- */

/* What ptrace's own check asks (kernel/ptrace.c, __ptrace_may_access), without the LSM hook: the
 * caller has the process's ids, or CAP_SYS_PTRACE over its user namespace; a process that is
 * not dumpable needs the capability in any case. */
static bool may_checkpoint(struct task_struct *task)
{
	const struct cred *cred = current_cred(), *tcred;
	struct mm_struct *mm;
	bool ok;

	rcu_read_lock();
	tcred = __task_cred(task);
	ok = (uid_eq(cred->uid, tcred->euid) && uid_eq(cred->uid, tcred->suid) && uid_eq(cred->uid, tcred->uid) &&
	      gid_eq(cred->gid, tcred->egid) && gid_eq(cred->gid, tcred->sgid) && gid_eq(cred->gid, tcred->gid)) ||
	     ns_capable(tcred->user_ns, CAP_SYS_PTRACE);
	rcu_read_unlock();
	if (!ok)
		return false;
	task_lock(task);
	mm = task->mm;
	if (mm && get_dumpable(mm) != SUID_DUMP_USER && !ns_capable(mm->user_ns, CAP_SYS_PTRACE))
		ok = false;
	task_unlock(task);
	return ok;
}

/* Writes a one-line reason into the caller's buffer (the reason and reason_len of either
 * ioctl's struct), if it gave one. */
static __printf(3, 4) void tell(u64 reason, u32 len, const char *fmt, ...)
{
	char buf[REASON_MAX];
	va_list ap;
	size_t n;

	if (!reason || !len)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	n = min_t(size_t, strlen(buf), len - 1);
	buf[n] = 0;
	if (copy_to_user(u64_to_user_ptr(reason), buf, n + 1))
		return;
}

#define say(a, ...) tell((a)->reason, (a)->reason_len, __VA_ARGS__)
#define rsay say

/* Waits (a little) until the released process is dead or stopped, as the caller asked. */
static void settle(struct task_struct *task, int verdict)
{
	int i;

	for (i = 0; i < 5000 && verdict; i++) {
		if (verdict == CRD_KILL && (READ_ONCE(task->exit_state) || (task->flags & PF_EXITING)))
			return;
		if (verdict == CRD_STOP && (READ_ONCE(task->jobctl) & JOBCTL_STOP_PENDING) == 0 &&
		    task_is_stopped(task))
			return;
		if (msleep_interruptible(1))
			return;
	}
}

static long crd_checkpoint(void __user *uarg)
{
	struct crd_checkpoint a;
	struct crd_ctx *c;
	struct task_struct *task;
	struct mm_struct *mm;
	struct pid *pid;
	struct out o = { 0 };
	u32 usize;
	long left;
	bool locked;
	int err;

	if (get_user(usize, (u32 __user *)uarg))
		return -EFAULT;
	if (usize < offsetofend(struct crd_checkpoint, flags))
		return -EINVAL;
	err = copy_struct_from_user(&a, sizeof(a), uarg, usize);
	if (err)
		return err;
	if (a.flags & ~(CRD_KILL | CRD_NO_BINARY_FILE | CRD_NO_SHARED_LIBRARIES | CRD_STOP)) {
		say(&a, "unknown flags %#x", a.flags);
		return -EINVAL;
	}
	if ((a.flags & CRD_KILL) && (a.flags & CRD_STOP)) {
		say(&a, "CRD_KILL and CRD_STOP together");
		return -EINVAL;
	}
	o.file = fget(a.fd);
	if (!o.file) {
		say(&a, "fd %d is not open", a.fd);
		return -EBADF;
	}
	if (!(o.file->f_mode & FMODE_WRITE)) {
		fput(o.file);
		say(&a, "fd %d is not open for writing", a.fd);
		return -EBADF;
	}
	pid = find_get_pid(a.pid);
	task = pid ? get_pid_task(pid, PIDTYPE_PID) : NULL;
	put_pid(pid);
	if (!task) {
		fput(o.file);
		say(&a, "no process %d", a.pid);
		return -ESRCH;
	}
	err = -EINVAL;
	if (!thread_group_leader(task))
		say(&a, "%d is a thread, not a process", a.pid);
	else if (same_thread_group(task, current))
		say(&a, "a process cannot checkpoint itself through /dev/crd");
	else if (task->flags & PF_KTHREAD)
		say(&a, "%d is a kernel thread", a.pid);
	else if (err = -EPERM, !may_checkpoint(task))
		say(&a, "not allowed to checkpoint %d (it is another user's, or not dumpable, and the caller lacks CAP_SYS_PTRACE)", a.pid);
	else if (err = -EBUSY, task_is_stopped_or_traced(task))
		say(&a, "%d is stopped (by a signal or a tracer): continue it first", a.pid);
	else
		err = 0;
	if (err)
		goto out_task;
	mm = get_task_mm(task);
	if (!mm) {
		err = -ESRCH;
		say(&a, "%d is exiting", a.pid);
		goto out_task;
	}
	err = -ENOMEM;
	c = kzalloc(sizeof(*c), GFP_KERNEL);
	o.path = kmalloc(PATH_MAX, GFP_KERNEL);
	if (!c || !o.path) {
		kfree(c);
		goto out_mm;
	}
	kref_init(&c->ref);
	init_completion(&c->parked);
	init_completion(&c->release);
	spin_lock_init(&c->lock);
	c->user_ns = get_user_ns(current_user_ns());
	c->pid_ns = get_pid_ns(task_active_pid_ns(current));
	c->mm = mm;
	init_task_work(&c->work, crd_park);
	kref_get(&c->ref);
	__module_get(THIS_MODULE);
	err = task_work_add(task, &c->work, TWA_SIGNAL);
	if (err) {
		kref_put(&c->ref, ctx_free);
		module_put(THIS_MODULE);
		say(&a, "%d is exiting", a.pid);
		err = -ESRCH;
		goto out_ctx;
	}
	left = wait_for_completion_interruptible_timeout(&c->parked, PARK_TIMEOUT);
	if (left <= 0) {
		spin_lock(&c->lock);
		c->abandoned = true;
		spin_unlock(&c->lock);
		err = left ? -EINTR : -ETIMEDOUT;
		if (!left)
			say(&a, "%d did not stop within 10 s (an uninterruptible sleep?); it runs on", a.pid);
		goto out_release;
	}
	if (c->err) {
		err = c->err;
		say(&a, "%s", c->reason);
		goto out_release;
	}
	o.c = c;
	o.stream = o.file->f_mode & FMODE_STREAM;
	/* The file position as write(2) keeps it: under f_pos_lock where the file has one. */
	locked = !o.stream && (o.file->f_mode & FMODE_ATOMIC_POS);
	if (locked)
		mutex_lock(&o.file->f_pos_lock);
	o.pos = o.file->f_pos;
	err = write_image(&o, mm, a.flags);
	if (!o.stream && o.offset)
		o.file->f_pos = o.pos;
	if (locked)
		mutex_unlock(&o.file->f_pos_lock);
	spin_lock(&c->lock);
	if (!err && c->killed)
		err = -ESRCH;
	spin_unlock(&c->lock);
	if (err == -ESRCH)
		refuse(c, -ESRCH, "it was killed while its image was written");
	if (err == -EILSEQ)
		refuse(c, -EILSEQ, "a name it has (command, path, mapping) is not UTF-8, which CRF cannot hold");
	if (err) {
		if (c->err)
			say(&a, "%s", c->reason);
		else
			say(&a, "writing the image failed after %llu bytes (error %d); %d runs on", o.offset, err, a.pid);
		goto out_release;
	}
	/* Killed only once its image is on disk. */
	if ((a.flags & CRD_KILL) && S_ISREG(file_inode(o.file)->i_mode)) {
		err = vfs_fsync(o.file, 0);
		if (err) {
			say(&a, "syncing the image failed (error %d); %d runs on", err, a.pid);
			goto out_release;
		}
	}
	spin_lock(&c->lock);
	c->verdict = a.flags & (CRD_KILL | CRD_STOP);
	spin_unlock(&c->lock);
	if (usize >= offsetofend(struct crd_checkpoint, bytes) &&
	    put_user(o.offset, &((struct crd_checkpoint __user *)uarg)->bytes))
		err = -EFAULT;
	if (usize >= offsetofend(struct crd_checkpoint, pages) &&
	    put_user(o.pages, &((struct crd_checkpoint __user *)uarg)->pages))
		err = -EFAULT;
out_release:
	complete(&c->release);
	if (!err)
		settle(task, a.flags & (CRD_KILL | CRD_STOP));
out_ctx:
	kref_put(&c->ref, ctx_free);
out_mm:
	kfree(o.path);
	mmput(mm);
out_task:
	put_task_struct(task);
	fput(o.file);
	return err;
}

/* --- Restart ---------------------------------------------------------------------------- */

#define RESTART_CHUNK	(1 << 20)
#define MAX_MAPS	65536
#define MAX_RUNS	(1 << 22)
/* The flags a process may set (arch/x86/kernel/ptrace.c, FLAG_MASK). */
#define USER_FLAGS	(X86_EFLAGS_CF | X86_EFLAGS_PF | X86_EFLAGS_AF | X86_EFLAGS_ZF | X86_EFLAGS_SF | \
			 X86_EFLAGS_TF | X86_EFLAGS_DF | X86_EFLAGS_OF | X86_EFLAGS_RF | X86_EFLAGS_AC)

/* What the process resumes with, set on its way back to user mode (the system call's own return
 * value would otherwise overwrite rax). */
struct resume {
	struct callback_head cb;
	u64 regs[27];
	u64 sigmask;
	u32 flags;
	struct pid *notify;
};

static void crd_resume(struct callback_head *cb)
{
	struct resume *w = container_of(cb, struct resume, cb);
	struct pt_regs *regs = current_pt_regs();
	const u64 *r = w->regs;
	sigset_t mask;

	regs->r15 = r[0];
	regs->r14 = r[1];
	regs->r13 = r[2];
	regs->r12 = r[3];
	regs->bp = r[4];
	regs->bx = r[5];
	regs->r11 = r[6];
	regs->r10 = r[7];
	regs->r9 = r[8];
	regs->r8 = r[9];
	regs->ax = r[10];
	regs->cx = r[11];
	regs->dx = r[12];
	regs->si = r[13];
	regs->di = r[14];
	regs->orig_ax = -1;	/* no system call to restart */
	regs->ip = r[16];
	regs->flags = (regs->flags & ~USER_FLAGS) | (r[18] & USER_FLAGS);
	regs->sp = r[19];
	/* As arch_prctl(ARCH_SET_FS) does it. */
	preempt_disable();
	loadsegment(fs, 0);
	x86_fsbase_write_cpu(r[21]);
	current->thread.fsindex = 0;
	current->thread.fsbase = r[21];
	preempt_enable();
	/* Its own mask: a signal that came meanwhile is delivered now, on its registers. */
	mask.sig[0] = w->sigmask;
	/* sigprocmask from the kernel would block these too. */
	sigdelsetmask(&mask, sigmask(SIGKILL) | sigmask(SIGSTOP));
	sigprocmask(SIG_SETMASK, &mask, NULL);
	/* The stop is queued before anyone hears the process is there: a SIGCONT of theirs that
	 * follows the notification must find it. */
	if (w->flags & CRD_RESTART_STOP)
		send_sig(SIGSTOP, current, 1);
	if (w->notify) {
		/* From this process (si_pid), which the notified one may not be allowed to signal
		 * otherwise (its user's process notifying root's rstrt). */
		struct kernel_siginfo info;
		struct task_struct *t;

		clear_siginfo(&info);
		info.si_signo = SIGUSR1;
		info.si_code = SI_USER;
		rcu_read_lock();
		t = pid_task(w->notify, PIDTYPE_PID);
		if (t) {
			info.si_pid = task_tgid_nr_ns(current, task_active_pid_ns(t));
			info.si_uid = from_kuid_munged(task_cred_xxx(t, user_ns), current_uid());
			send_sig_info(SIGUSR1, &info, t);
		}
		rcu_read_unlock();
	}
	put_pid(w->notify);
	kfree(w);
	module_put(THIS_MODULE);
}

/* Checks the plan before anything is changed; takes a reference on each mapped file. */
static int check_plan(struct crd_restart *a, struct crd_map *m, struct crd_run *r, struct file **files)
{
	u32 i, j = 0;

	for (i = 0; i < a->nmaps; i++) {
		u32 kind = m[i].flags & (MAP_PRIVATE | MAP_SHARED);

		if ((m[i].start | m[i].end) & ~PAGE_MASK || m[i].start >= m[i].end || m[i].end > TASK_SIZE ||
		    (i && m[i].start < m[i - 1].end) || m[i].prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC) ||
		    m[i].flags & ~(MAP_PRIVATE | MAP_SHARED | MAP_GROWSDOWN | MAP_NORESERVE) ||
		    (kind != MAP_PRIVATE && kind != MAP_SHARED)) {
			rsay(a, "mapping %u (%#llx-%#llx) of the plan is invalid", i, m[i].start, m[i].end);
			return -EINVAL;
		}
		if (m[i].pgoff > (ULONG_MAX >> PAGE_SHIFT)) {
			rsay(a, "mapping %u has a file offset out of range", i);
			return -EINVAL;
		}
		if (m[i].fd < 0) {
			if (kind == MAP_SHARED) {
				rsay(a, "shared anonymous memory at %#llx: the crd restart does not make it", m[i].start);
				return -EOPNOTSUPP;
			}
			continue;
		}
		files[i] = fget(m[i].fd);
		if (!files[i] || !(files[i]->f_mode & FMODE_READ)) {
			rsay(a, "the file of mapping %#llx (fd %d) is not open for reading", m[i].start, m[i].fd);
			return -EBADF;
		}
	}
	for (i = 0; i < a->nruns; i++) {
		u64 end = r[i].addr + r[i].len;

		while (j < a->nmaps && m[j].end <= r[i].addr)
			j++;
		if ((r[i].addr | r[i].len) & ~PAGE_MASK || !r[i].len || end < r[i].addr || j == a->nmaps ||
		    r[i].addr < m[j].start || end > m[j].end || (m[j].flags & MAP_SHARED) ||
		    r[i].offset + r[i].len < r[i].offset || (i && r[i].addr < r[i - 1].addr + r[i - 1].len)) {
			rsay(a, "page run %u (%#llx+%#llx) lies outside the private mappings of the plan", i, r[i].addr,
			     r[i].len);
			return -EINVAL;
		}
	}
	return 0;
}

/* Unmaps everything but the special mappings (the vdso and vvar, already where the image has
 * them). */
static int unmap_all(struct mm_struct *mm)
{
	struct vm_area_struct *vma;
	unsigned long (*ranges)[2];
	int n = 0, i, err = 0;
	VMA_ITERATOR(vmi, mm, 0);

	mmap_read_lock(mm);
	for_each_vma(vmi, vma)
		n++;
	ranges = kvmalloc_array(n ?: 1, sizeof(*ranges), GFP_KERNEL);
	if (!ranges) {
		mmap_read_unlock(mm);
		return -ENOMEM;
	}
	i = 0;
	vma_iter_init(&vmi, mm, 0);
	for_each_vma(vmi, vma) {
		if (i == n)
			break;
		if (vma->vm_ops && vma->vm_ops->name)
			continue;
		ranges[i][0] = vma->vm_start;
		ranges[i][1] = vma->vm_end;
		i++;
	}
	mmap_read_unlock(mm);
	while (i-- > 0 && !err)
		err = vm_munmap(ranges[i][0], ranges[i][1] - ranges[i][0]);
	kvfree(ranges);
	return err;
}

/* Reads each run of pages from the image into place. */
static int fill(struct file *image, struct crd_map *m, u32 nmaps, struct crd_run *r, u32 nruns, u8 *buf)
{
	u32 i, j = 0;

	for (i = 0; i < nruns; i++) {
		u64 done = 0;

		while (j < nmaps && m[j].end <= r[i].addr)
			j++;
		while (done < r[i].len) {
			size_t n = min_t(u64, r[i].len - done, RESTART_CHUNK);
			loff_t pos = r[i].offset + done;
			unsigned long at = r[i].addr + done;

			if (m[j].prot & PROT_WRITE) {
				/* Straight from the page cache into place. */
				struct iov_iter it;
				ssize_t got;

				iov_iter_ubuf(&it, ITER_DEST, (void __user *)at, n);
				got = vfs_iter_read(image, &it, &pos, 0);
				if (got <= 0)
					return got < 0 ? got : -EIO;
				n = got;
			} else {
				/* A read-only private mapping: written as a debugger would, copied on write. */
				if (kernel_read(image, buf, n, &pos) != n)
					return -EIO;
				if (access_process_vm(current, at, buf, n, FOLL_FORCE | FOLL_WRITE) != n)
					return -EFAULT;
			}
			done += n;
			if (fatal_signal_pending(current))
				return -EINTR;
			cond_resched();
		}
	}
	return 0;
}

static void set_layout(struct mm_struct *mm, const struct crd_restart *a)
{
	size_t n = min(ARRAY_SIZE(mm->saved_auxv), ARRAY_SIZE(a->auxv));

	mmap_write_lock(mm);
	spin_lock(&mm->arg_lock);
	mm->start_code = a->mm[0];
	mm->end_code = a->mm[1];
	mm->start_data = a->mm[2];
	mm->end_data = a->mm[3];
	mm->start_brk = a->mm[4];
	mm->brk = a->mm[5];
	mm->start_stack = a->mm[6];
	mm->arg_start = a->mm[7];
	mm->arg_end = a->mm[8];
	mm->env_start = a->mm[9];
	mm->env_end = a->mm[10];
	spin_unlock(&mm->arg_lock);
	memcpy(mm->saved_auxv, a->auxv, n * sizeof(a->auxv[0]));
	mm->saved_auxv[n - 2] = 0;	/* AT_NULL ends it, whatever was cut */
	mm->saved_auxv[n - 1] = 0;
	mmap_write_unlock(mm);
}

/*
 * Whether this kernel holds write access denied to the executable of an mm (as execve leaves
 * it, allowed again when the mm lets the file go): most do; 6.11.0-6.11.10 and 6.12.0-6.12.1
 * did not, and distributions backport either way, so it is asked of the caller's own, which
 * execve gave it: its file is denied writers (a negative count) on such a kernel.
 */
static bool exe_denies_write(struct mm_struct *mm)
{
	struct file *cur;
	bool denies;

	rcu_read_lock();
	cur = rcu_dereference(mm->exe_file);
	denies = cur && atomic_read(&file_inode(cur)->i_writecount) < 0;
	rcu_read_unlock();
	return denies;
}

/*
 * The file of mapping a->exe_map, to be the restored process's executable: a regular file on a
 * mount that allows execution, which the caller (with the image owner's credentials by now) may
 * execute -- what execve would take -- with write access denied as execve denies it. No more
 * than the caller could get by executing that file itself.
 */
static int take_exe(struct crd_restart *a, struct file **files, struct file **exe, bool denies)
{
	struct file *f;
	bool noexec;

	if (a->exe_map >= a->nmaps || !files[a->exe_map]) {
		rsay(a, "the program's mapping (%u) is not one of a file", a->exe_map);
		return -EINVAL;
	}
	f = files[a->exe_map];
	/* path_noexec(), which modules cannot call. */
	noexec = (f->f_path.mnt->mnt_flags & MNT_NOEXEC) || (f->f_path.mnt->mnt_sb->s_iflags & SB_I_NOEXEC);
	if (!S_ISREG(file_inode(f)->i_mode) || noexec || file_permission(f, MAY_EXEC)) {
		rsay(a, "the program (the file of mapping %u) is not one the caller may execute", a->exe_map);
		return -EACCES;
	}
	if (denies && deny_write_access(f)) {
		rsay(a, "the program is open for writing");
		return -ETXTBSY;
	}
	*exe = f;
	return 0;
}

/*
 * Makes `exe` (from take_exe: write access denied) the executable of `mm`, the caller's, once it
 * holds the image's mappings: what /proc/PID/exe names, as after an execve of it. The one it had
 * (crs, which it no longer maps) is let go as the kernel lets an executable go.
 */
static void set_exe(struct mm_struct *mm, struct file *exe, bool denies)
{
	struct file *old;

	get_file(exe);
	old = xchg((struct file __force **)&mm->exe_file, exe);
	if (old) {
		if (denies)
			allow_write_access(old);
		fput(old);
	}
}

static long crd_restart(void __user *uarg)
{
	struct crd_restart *a;
	struct crd_map *maps = NULL;
	struct crd_run *runs = NULL;
	struct file **files = NULL, *image = NULL, *exe = NULL;
	bool denies = false;
	struct resume *w = NULL;
	struct mm_struct *mm = current->mm;
	u8 *buf = NULL;
	u32 usize, i;
	int err, fd, max;

	if (get_user(usize, (u32 __user *)uarg))
		return -EFAULT;
	if (usize < offsetofend(struct crd_restart, dumpable))
		return -EINVAL;
	a = kzalloc(sizeof(*a), GFP_KERNEL);
	if (!a)
		return -ENOMEM;
	err = copy_struct_from_user(a, sizeof(*a), uarg, usize);
	if (err)
		goto out;
	err = -EINVAL;
	if (a->flags & ~(CRD_RESTART_NOTIFY | CRD_RESTART_STOP | CRD_RESTART_EXE)) {
		rsay(a, "unknown flags %#x", a->flags);
		goto out;
	}
	if (!a->nmaps || a->nmaps > MAX_MAPS || a->nruns > MAX_RUNS) {
		rsay(a, "a plan of %u mappings and %u runs", a->nmaps, a->nruns);
		goto out;
	}
	/* 64-bit code and stack segments, no gs base, addresses of user space. */
	if (a->regs[17] != __USER_CS || a->regs[20] != __USER_DS || a->regs[22] || a->regs[21] >= TASK_SIZE_MAX ||
	    a->regs[16] >= TASK_SIZE_MAX || a->rseq >= TASK_SIZE_MAX) {
		rsay(a, "the registers are not those of a 64-bit process (cs %#llx ss %#llx gs_base %#llx)", a->regs[17],
		     a->regs[20], a->regs[22]);
		goto out;
	}
	/* As rseq(2) and PR_SET_MM_MAP check them. */
	if (a->rseq && (!IS_ALIGNED(a->rseq, 32) || a->rseq_len < 32 || a->rseq_len > PAGE_SIZE)) {
		rsay(a, "the rseq area %#llx+%u is not one rseq(2) would take", a->rseq, a->rseq_len);
		goto out;
	}
	for (i = 0; i < 11; i++) {
		if (a->mm[i] >= TASK_SIZE) {
			rsay(a, "the memory layout's value %u (%#llx) is outside user space", i, a->mm[i]);
			goto out;
		}
	}
	if (a->mm[0] > a->mm[1] || a->mm[2] > a->mm[3] || a->mm[4] > a->mm[5] || a->mm[7] > a->mm[8] ||
	    a->mm[9] > a->mm[10]) {
		rsay(a, "the memory layout's ranges are inverted");
		goto out;
	}
	if (get_nr_threads(current) != 1 || !mm || atomic_read(&mm->mm_users) != 1) {
		rsay(a, "the caller must be single-threaded and share its memory with nobody");
		goto out;
	}
	err = -ENOMEM;
	maps = kvmalloc_array(a->nmaps, sizeof(*maps), GFP_KERNEL);
	runs = kvmalloc_array(a->nruns ?: 1, sizeof(*runs), GFP_KERNEL);
	files = kvcalloc(a->nmaps, sizeof(*files), GFP_KERNEL);
	w = kzalloc(sizeof(*w), GFP_KERNEL);
	buf = kvmalloc(RESTART_CHUNK, GFP_KERNEL);
	if (!maps || !runs || !files || !w || !buf)
		goto out;
	err = -EFAULT;
	if (copy_from_user(maps, u64_to_user_ptr(a->maps), a->nmaps * sizeof(*maps)) ||
	    copy_from_user(runs, u64_to_user_ptr(a->runs), a->nruns * sizeof(*runs)))
		goto out;
	err = check_plan(a, maps, runs, files);
	if (err)
		goto out;
	if (a->flags & CRD_RESTART_EXE) {
		denies = exe_denies_write(mm);
		err = take_exe(a, files, &exe, denies);
		if (err)
			goto out;
	}
	err = -EBADF;
	image = fget(a->fd);
	if (!image || !(image->f_mode & FMODE_READ) || !(image->f_mode & FMODE_PREAD)) {
		rsay(a, "the image (fd %d) is not a file open for reading", a->fd);
		goto out;
	}
	if (a->flags & CRD_RESTART_NOTIFY) {
		if (a->notify_pid) {
			/* Another process than the parent: one the caller may signal. */
			struct task_struct *t;
			bool ok = capable(CAP_KILL);

			w->notify = find_get_pid(a->notify_pid);
			rcu_read_lock();
			t = w->notify ? pid_task(w->notify, PIDTYPE_PID) : NULL;
			if (t && !ok) {
				const struct cred *tc = __task_cred(t);

				ok = uid_eq(current_euid(), tc->suid) || uid_eq(current_euid(), tc->uid) ||
				     uid_eq(current_uid(), tc->suid) || uid_eq(current_uid(), tc->uid);
			}
			rcu_read_unlock();
			if (w->notify && !ok) {
				err = -EPERM;
				rsay(a, "not allowed to signal process %d", a->notify_pid);
				goto out;
			}
		} else {
			rcu_read_lock();
			w->notify = get_pid(task_tgid(rcu_dereference(current->real_parent)));
			rcu_read_unlock();
		}
		if (!w->notify) {
			err = -ESRCH;
			rsay(a, "no process %d to notify", a->notify_pid);
			goto out;
		}
	}
	memcpy(w->regs, a->regs, sizeof(w->regs));
	w->sigmask = a->sigmask;
	w->flags = a->flags;
	init_task_work(&w->cb, crd_resume);

	/* No way back from here: on failure the process is killed, never run half-made. */
	err = unmap_all(mm);
	for (i = 0; i < a->nmaps && !err; i++) {
		struct crd_map *m = &maps[i];
		unsigned long got = vm_mmap(files[i], m->start, m->end - m->start, m->prot,
					    m->flags | MAP_FIXED_NOREPLACE, m->pgoff << PAGE_SHIFT);

		if (got != m->start)
			err = IS_ERR_VALUE(got) ? (int)got : -EEXIST;
	}
	err = err ?: fill(image, maps, a->nmaps, runs, a->nruns, buf);
	if (!err) {
		set_layout(mm, a);
		/* Dumpable only now that it is the image's process (PR_SET_DUMPABLE's values). */
		set_mask_bits(&mm->flags, MMF_DUMPABLE_MASK, a->dumpable ? SUID_DUMP_USER : SUID_DUMP_DISABLE);
		current->rseq = (struct rseq __user *)(uintptr_t)a->rseq;
		current->rseq_sig = a->rseq ? a->rseq_sig : 0;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
		current->rseq_len = a->rseq ? a->rseq_len : 0;
#endif
		rseq_set_notify_resume(current);
		/* Only fds 0-2 are the image's. */
		rcu_read_lock();
		max = files_fdtable(current->files)->max_fds;
		rcu_read_unlock();
		for (fd = 3; fd < max; fd++)
			close_fd(fd);
		if (exe) {
			set_exe(mm, exe, denies);
			exe = NULL;
		}
		__module_get(THIS_MODULE);
		err = task_work_add(current, &w->cb, TWA_RESUME);
		if (!err)
			w = NULL;
		else
			module_put(THIS_MODULE);
	}
	if (err) {
		pr_warn("crd: restart of pid %d failed after its memory was released (error %d): killed\n",
			task_pid_nr(current), err);
		force_sig(SIGKILL);
	}
out:
	if (exe && denies)
		allow_write_access(exe);
	if (files)
		for (i = 0; i < a->nmaps; i++)
			if (files[i])
				fput(files[i]);
	if (image)
		fput(image);
	if (w) {
		put_pid(w->notify);
		kfree(w);
	}
	kvfree(buf);
	kvfree(files);
	kvfree(runs);
	kvfree(maps);
	kfree(a);
	return err;
}

static long crd_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	if (_IOC_TYPE(cmd) != CRD_IOC_MAGIC)
		return -ENOTTY;
	switch (_IOC_NR(cmd)) {
	case _IOC_NR(CRD_VERSION):
		return CRD_ABI_VERSION;
	case _IOC_NR(CRD_CHECKPOINT):
		return crd_checkpoint((void __user *)arg);
	case _IOC_NR(CRD_RESTART):
		return crd_restart((void __user *)arg);
	}
	return -ENOTTY;
}

static const struct file_operations crd_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = crd_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice crd_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "crd",
	.fops = &crd_fops,
};

static int __init crd_init(void)
{
	crd_dev.mode = mode;
	return misc_register(&crd_dev);
}

static void __exit crd_exit(void)
{
	misc_deregister(&crd_dev);
}

module_init(crd_init);
module_exit(crd_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("crs: checkpoint a process into a CRF image without ptrace (/dev/crd)");
