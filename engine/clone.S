/* pardo_clone3_run(struct clone_args *args, size_t size, int (*fn)(void *), void *arg)
 *
 * clone3() with a child that runs fn(arg) on the stack given in args and then _exit()s
 * with its return value. glibc has no public clone3 wrapper, and syscall(SYS_clone3) cannot
 * be used with a new stack: the child would return into the wrapper on an empty stack.
 * Returns the child's pid (or -errno) in the parent, like the raw syscall.
 */
#if defined(__x86_64__)
    .text
    .globl pardo_clone3_run
    .type pardo_clone3_run, @function
pardo_clone3_run:
    mov %rdx, %r8          /* fn: r8/r9 survive the syscall in the child */
    mov %rcx, %r9          /* arg */
    mov $435, %eax         /* SYS_clone3 */
    syscall
    test %rax, %rax
    jnz 1f
.Lchild:                   /* the child: fn in r8, arg in r9, on its new stack */
    xor %ebp, %ebp         /* mark the outermost frame */
    mov %r9, %rdi
    call *%r8
    mov %eax, %edi
    mov $60, %eax          /* SYS_exit */
    syscall
    hlt
1:  ret
    .size pardo_clone3_run, .-pardo_clone3_run

/* pardo_clone_run(unsigned long flags, void *stack_top, int (*fn)(void *), void *arg,
 *                 int *child_tid)
 *
 * The same with the older clone(), where clone3 is refused (before Linux 5.3; Docker's
 * default seccomp profile). fn and arg go on the child's stack, where the child takes
 * them: across the system call only the stack pointer is the child's own.
 */
    .globl pardo_clone_run
    .type pardo_clone_run, @function
pardo_clone_run:
    and $-16, %rsi
    sub $16, %rsi
    mov %rdx, 0(%rsi)      /* fn */
    mov %rcx, 8(%rsi)      /* arg */
    mov %r8, %r10          /* child_tid */
    xor %edx, %edx         /* parent_tid */
    xor %r8d, %r8d         /* tls */
    mov $56, %eax          /* SYS_clone */
    syscall
    test %rax, %rax
    jnz 2f
    pop %r8                /* child: fn, arg; the stack is 16-byte aligned again */
    pop %r9
    jmp .Lchild
2:  ret
    .size pardo_clone_run, .-pardo_clone_run
#elif defined(__aarch64__)
    .text
    .globl pardo_clone3_run
    .type pardo_clone3_run, %function
pardo_clone3_run:
    mov x9, x2             /* fn */
    mov x10, x3            /* arg */
    mov x8, #435           /* SYS_clone3 */
    svc #0
    cbnz x0, 1f
.Lchild:                   /* the child: fn in x9, arg in x10, on its new stack */
    mov x29, xzr           /* outermost frame */
    mov x30, xzr
    mov x0, x10
    blr x9
    mov x8, #93            /* SYS_exit */
    svc #0
    brk #0
1:  ret
    .size pardo_clone3_run, .-pardo_clone3_run

    .globl pardo_clone_run
    .type pardo_clone_run, %function
pardo_clone_run:             /* x0 flags, x1 stack top, x2 fn, x3 arg, x4 child_tid */
    and x1, x1, #-16
    stp x2, x3, [x1, #-16]!
    mov x2, xzr            /* parent_tid */
    mov x3, xzr            /* tls; x4 stays child_tid */
    mov x8, #220           /* SYS_clone */
    svc #0
    cbnz x0, 2f
    ldp x9, x10, [sp], #16 /* child: fn, arg */
    b .Lchild
2:  ret
    .size pardo_clone_run, .-pardo_clone_run
#endif
    .section .note.GNU-stack,"",%progbits
