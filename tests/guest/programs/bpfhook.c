/*
 * bpfhook: load a (harmless) eBPF kprobe program and attach it to a kernel function, the way an
 * eBPF rootkit hooks syscalls, then wait. Usage: bpfhook [FUNCTION]  (default __x64_sys_getdents64)
 * Prints "attached FUNCTION" once the program runs on every call of FUNCTION.
 */
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	const char *func = argc > 1 ? argv[1] : "__x64_sys_getdents64";
	struct bpf_insn insns[] = {
		{ .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
		{ .code = BPF_JMP | BPF_EXIT },
	};
	static char log[65536];
	union bpf_attr attr;
	struct perf_event_attr pe;
	int prog, type = -1, fd;
	FILE *f;

	memset(&attr, 0, sizeof(attr));
	attr.prog_type = BPF_PROG_TYPE_KPROBE;
	attr.insns = (unsigned long)insns;
	attr.insn_cnt = 2;
	attr.license = (unsigned long)"GPL";
	attr.log_buf = (unsigned long)log;
	attr.log_size = sizeof(log);
	attr.log_level = 1;
	strncpy(attr.prog_name, "vms_hook", sizeof(attr.prog_name) - 1);
	prog = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr));
	if (prog < 0) {
		perror("BPF_PROG_LOAD");
		fprintf(stderr, "%s\n", log);
		return 1;
	}
	f = fopen("/sys/bus/event_source/devices/kprobe/type", "r");
	if (!f || fscanf(f, "%d", &type) != 1) {
		perror("kprobe PMU type");
		return 1;
	}
	fclose(f);
	memset(&pe, 0, sizeof(pe));
	pe.size = sizeof(pe);
	pe.type = type;
	pe.config1 = (unsigned long)func;
	fd = syscall(SYS_perf_event_open, &pe, -1, 0, -1, 0);
	if (fd < 0 || ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog) || ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)) {
		perror("attach");
		return 1;
	}
	printf("attached %s\n", func);
	fflush(stdout);
	for (;;)
		pause();
}
