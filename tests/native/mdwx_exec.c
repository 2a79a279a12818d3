/* Run a command under two seccomp rules of the systemd unit, without systemd:
 * - MemoryDenyWriteExecute=yes: mmap() of memory both writable and executable, and
 *   mprotect()/pkey_mprotect() adding PROT_EXEC, fail with EPERM;
 * - SystemCallFilter=~@resources with SystemCallErrorNumber=EPERM: the @resources calls
 *   (priorities, affinity, NUMA policy, rlimits) fail with EPERM.
 * Lets tests check that the daemon's runtime (LiteRT, numpy, Pillow, paho, cryptography)
 * tolerates them. Usage: mdwx_exec COMMAND [ARG...]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "only x86_64 and aarch64"
#endif

/* Low 32 bits of syscall argument 2 (prot) on a little-endian machine. */
#define ARG2 (offsetof(struct seccomp_data, args) + 2 * sizeof(__u64))

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s COMMAND [ARG...]\n", argv[0]);
        return 2;
    }
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mmap, 0, 4),
        /* mmap: deny when prot has both PROT_WRITE and PROT_EXEC */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG2),
        BPF_STMT(BPF_ALU | BPF_AND | BPF_K, PROT_WRITE | PROT_EXEC),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PROT_WRITE | PROT_EXEC, 5, 6),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW), /* unreachable pad */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mprotect, 1, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_pkey_mprotect, 0, 3),
        /* mprotect / pkey_mprotect: deny when prot has PROT_EXEC */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG2),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
    /* systemd's @resources group (systemd-analyze syscall-filter @resources). */
    static const int resources[] = {
        __NR_ioprio_set, __NR_mbind, __NR_migrate_pages, __NR_move_pages, __NR_sched_setaffinity,
        __NR_sched_setattr, __NR_sched_setparam, __NR_sched_setscheduler, __NR_set_mempolicy,
        __NR_setpriority, __NR_setrlimit,
    };
    enum { NR = sizeof(resources) / sizeof(resources[0]) };
    struct sock_filter g[NR + 6];
    int n = 0;
    g[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    g[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0);
    g[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    g[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (int i = 0; i < NR; i++) /* match: jump to the ERRNO return after the list */
        g[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, resources[i], NR - i, 0);
    g[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    g[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA));
    struct sock_fprog prog2 = {.len = (unsigned short)n, .filter = g};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog2)) {
        perror("seccomp");
        return 125;
    }
    execvp(argv[1], argv + 1);
    perror("execvp");
    return 127;
}
