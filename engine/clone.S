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
    xor %ebp, %ebp         /* child: new stack, mark the outermost frame */
    mov %r9, %rdi
    call *%r8
    mov %eax, %edi
    mov $60, %eax          /* SYS_exit */
    syscall
    hlt
1:  ret
    .size pardo_clone3_run, .-pardo_clone3_run
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
    mov x29, xzr           /* child: outermost frame */
    mov x30, xzr
    mov x0, x10
    blr x9
    mov x8, #93            /* SYS_exit */
    svc #0
    brk #0
1:  ret
    .size pardo_clone3_run, .-pardo_clone3_run
#endif
    .section .note.GNU-stack,"",%progbits
