/* `docker run --init`: the guest init's binary, bound at /sbin/docker-init
 * in the container and run under that name, is a minimal PID 1 in tini's
 * manner (dockerd's docker-init is tini): it runs the command as its child,
 * forwards signals to it, reaps every zombie, and exits with the child's
 * status (128+n when signal n killed it). See PROTOCOL.md §3. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "init.h"

/* Left to their default actions, as tini leaves them: a fault is the init's
 * own, and a PID 1 ignores the rest by default. */
static const int unforwarded[] = {SIGFPE, SIGILL, SIGSEGV, SIGBUS, SIGABRT, SIGTRAP, SIGSYS,
				  SIGTTIN, SIGTTOU};

static void __attribute__((noreturn)) run_child(char **cmd)
{
	/* Its own process group, the terminal's foreground one with a tty, so
	 * that ^C and job control reach the command rather than the init.
	 * SIGTTOU blocked: tcsetpgrp from the background must not stop us. */
	sigset_t all;
	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	setpgid(0, 0);
	if (isatty(STDIN_FILENO))
		tcsetpgrp(STDIN_FILENO, getpid());
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execvp(cmd[0], cmd);
	int saved = errno;
	fprintf(stderr, "[FATAL tini (%d)] exec %s failed: %s\n", getpid(), cmd[0],
		strerror(saved));
	_exit(saved == ENOENT ? 127 : saved == EACCES ? 126 : 1);
}

static int status_code(int status)
{
	return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

/* Reap whatever has exited; the child's exit status once it is among them. */
static int reap(pid_t child, int *code)
{
	int status, found = 0;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
		if (pid == child) {
			*code = status_code(status);
			found = 1;
		}
	return found;
}

static int supervise(pid_t child, const sigset_t *waited)
{
	int code = 0;
	for (;;) {
		siginfo_t info;
		int sig = sigwaitinfo(waited, &info);
		if (sig < 0)
			continue;
		if (sig == SIGCHLD) {
			if (reap(child, &code))
				return code;
			continue;
		}
		if (kill(child, sig) && errno != ESRCH)
			fprintf(stderr, "[WARN  tini (%d)] forward signal %d: %s\n", getpid(), sig,
				strerror(errno));
	}
}

int docker_init_main(int argc, char **argv)
{
	int first = 1;
	if (first < argc && !strcmp(argv[first], "--"))
		first++;
	if (first >= argc) {
		fprintf(stderr, "[FATAL tini (%d)] no command given\n", getpid());
		return 1;
	}
	sigset_t waited;
	sigfillset(&waited);
	for (size_t i = 0; i < sizeof(unforwarded) / sizeof(unforwarded[0]); i++)
		sigdelset(&waited, unforwarded[i]);
	sigprocmask(SIG_SETMASK, &waited, NULL);
	pid_t child = fork();
	if (child < 0) {
		fprintf(stderr, "[FATAL tini (%d)] fork failed: %s\n", getpid(), strerror(errno));
		return 1;
	}
	if (child == 0)
		run_child(argv + first);
	return supervise(child, &waited);
}
