/* Context switch for x86-64 (System V): the callee-saved registers, MXCSR and the x87
 * control word go on the current stack; the stack pointer goes to *save_sp (rdi); the
 * same frame is popped from new_sp (rsi). A fresh stack's first frame (stack.c) "returns"
 * into ar__ctx_entry, which calls fn(arg) from r13 and r12. */
#if defined(__x86_64__) && !defined(AR_CTX_UCONTEXT)
    .text
    .globl ar__ctx_switch
    .hidden ar__ctx_switch
    .type ar__ctx_switch, @function
ar__ctx_switch:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size ar__ctx_switch, .-ar__ctx_switch

    .globl ar__ctx_entry
    .hidden ar__ctx_entry
    .type ar__ctx_entry, @function
ar__ctx_entry:
    .cfi_startproc
    .cfi_undefined rip
    movq %r12, %rdi
    callq *%r13
    ud2
    .cfi_endproc
    .size ar__ctx_entry, .-ar__ctx_entry
#endif
    .section .note.GNU-stack,"",@progbits
