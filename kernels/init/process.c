/* START: a container's main process (new mount, uts and cgroup namespaces,
 * its network namespace, a new or a peer's pid and ipc namespace, rooted at
 * the container's root) and exec processes (joining the main process's
 * namespaces). A close-on-exec pipe from the child reports any failure
 * before execve, so START is only acknowledged for a process that really
 * runs its program. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "init.h"
#include "util.h"

/* clone3 (Linux >= 5.7); musl has no wrapper and its headers lack the ABI. */
#define SYS_clone3_ 435
#define CLONE_INTO_CGROUP_ 0x200000000ULL
struct clone_args3 {
	uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
		set_tid, set_tid_size, cgroup;
};

#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define MAX_GROUPS 64

struct spawn {
	const struct json *spec;
	char **argv;
	char **envp;
	size_t envc;
	const char *cwd;
	const char *user;
	int main;
	int privileged;          /* an exec with every capability (docker exec --privileged) */
	int tty;
	int stdin_open;
	char slave[64];          /* pty slave path inside the container */
	int stdio[3];            /* child ends for non-tty processes, -1 if unused */
	int err_pipe;            /* write end: failure reports */
	struct container *c;
	pid_t main_pid;          /* the container's running main process, or 0 */
	pid_t ipc_peer_pid;      /* main process whose ipc namespace a main joins, or 0 */
	const char *builtin;     /* run this built-in program instead of exec */
};

/* The child reports "kind\n<errno>\nmessage" and exits. */
static void __attribute__((noreturn)) child_fail(struct spawn *s, const char *kind, int errnum,
						const char *fmt, ...)
{
	char msg[900];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	char out[1024];
	int n = snprintf(out, sizeof(out), "%s\n%d\n%s", kind, errnum, msg);
	if (n > 0)
		write_all(s->err_pipe, out, (size_t)n < sizeof(out) ? (size_t)n : sizeof(out) - 1);
	_exit(127);
}

static const char *env_get(char **envp, const char *key)
{
	size_t n = strlen(key);
	for (char **e = envp; *e; e++)
		if (!strncmp(*e, key, n) && (*e)[n] == '=')
			return *e + n + 1;
	return NULL;
}

/* One passwd or group line split on ':' into at most `max` fields. */
static int split_fields(char *line, char **fields, int max)
{
	int n = 0;
	fields[n++] = line;
	for (char *p = line; *p && n < max; p++)
		if (*p == ':') {
			*p = 0;
			fields[n++] = p + 1;
		}
	return n;
}

static int is_number(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return 0;
	return 1;
}

struct identity {
	uid_t uid;
	gid_t gid;
	char name[256];
	char home[1024];
	gid_t groups[MAX_GROUPS];
	int ngroups;
};

/* Once each; beyond MAX_GROUPS they are dropped (and reported by the caller). */
static int add_group(struct identity *id, gid_t gid)
{
	for (int i = 0; i < id->ngroups; i++)
		if (id->groups[i] == gid)
			return 0;
	if (id->ngroups == MAX_GROUPS)
		return -1;
	id->groups[id->ngroups++] = gid;
	return 0;
}

/* Docker's User: "", name, uid, name:group, uid:gid, resolved as runc does
 * against the container's own /etc/passwd and /etc/group. */
static int resolve_user(const char *spec, struct identity *id, char *err, size_t errlen)
{
	char user[256], group[256] = "";
	snprintf(user, sizeof(user), "%s", spec);
	char *colon = strchr(user, ':');
	if (colon) {
		*colon = 0;
		snprintf(group, sizeof(group), "%s", colon + 1);
	}
	id->uid = 0;
	id->gid = 0;
	id->ngroups = 0;
	snprintf(id->home, sizeof(id->home), "/");
	id->name[0] = 0;
	int found_user = 0;
	char line[4096];
	FILE *f = fopen("/etc/passwd", "re");
	if (f) {
		while (fgets(line, sizeof(line), f)) {
			line[strcspn(line, "\n")] = 0;
			char *fl[7];
			if (split_fields(line, fl, 7) < 7)
				continue;
			int match = *user ? (is_number(user) ? !strcmp(fl[2], user) : !strcmp(fl[0], user))
					  : !strcmp(fl[2], "0");
			if (!match)
				continue;
			id->uid = (uid_t)strtoul(fl[2], NULL, 10);
			id->gid = (gid_t)strtoul(fl[3], NULL, 10);
			snprintf(id->name, sizeof(id->name), "%s", fl[0]);
			snprintf(id->home, sizeof(id->home), "%s", fl[5]);
			found_user = 1;
			break;
		}
		fclose(f);
	}
	if (!found_user && *user) {
		if (!is_number(user)) {
			snprintf(err, errlen, "unable to find user %s: no matching entries in passwd file",
				 user);
			return -1;
		}
		id->uid = (uid_t)strtoul(user, NULL, 10);
	}
	int found_group = !*group;
	f = fopen("/etc/group", "re");
	while (f && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		char *fl[4];
		if (split_fields(line, fl, 4) < 4)
			continue;
		gid_t gid = (gid_t)strtoul(fl[2], NULL, 10);
		if (*group && !found_group &&
		    (is_number(group) ? !strcmp(fl[2], group) : !strcmp(fl[0], group))) {
			id->gid = gid;
			found_group = 1;
		}
		/* Supplementary groups list the user by name. */
		if (!*group && id->name[0]) {
			char *members = fl[3];
			for (char *m = strtok(members, ","); m; m = strtok(NULL, ","))
				if (!strcmp(m, id->name))
					add_group(id, gid);
		}
	}
	if (f)
		fclose(f);
	if (!found_group) {
		if (!is_number(group)) {
			snprintf(err, errlen,
				 "unable to find group %s: no matching entries in group file", group);
			return -1;
		}
		id->gid = (gid_t)strtoul(group, NULL, 10);
	}
	return 0;
}

/* The first entry of the container's /etc/group named or numbered NAME
 * whose gid GroupAdd has not taken yet (runc's GetAdditionalGroups). */
static int group_entry(const char *name, const gid_t *taken, int ntaken, gid_t *out)
{
	char line[4096];
	FILE *f = fopen("/etc/group", "re");
	int found = 0;
	while (f && !found && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		char *fl[4];
		if (split_fields(line, fl, 4) < 3 || (strcmp(fl[0], name) && strcmp(fl[2], name)))
			continue;
		*out = (gid_t)strtoul(fl[2], NULL, 10);
		found = 1;
		for (int i = 0; i < ntaken; i++)
			found &= taken[i] != *out;
	}
	if (f)
		fclose(f);
	return found;
}

/* A GroupAdd entry that names no group: a number in 0-2147483647. */
static int group_number(const char *name, gid_t *out, char *err, size_t errlen)
{
	char *end;
	errno = 0;
	long long n = strtoll(name, &end, 10);
	if (!*name || *end || errno) {
		snprintf(err, errlen, "Unable to find group %s: no matching entries in group file",
			 name);
		return -1;
	}
	if (n < 0 || n > 2147483647) {
		snprintf(err, errlen, "uids and gids must be in range 0-2147483647");
		return -1;
	}
	*out = (gid_t)n;
	return 0;
}

/* Docker's GroupAdd: names or numbers, after the user's own groups. */
static int add_extra_groups(const struct buf *names, struct identity *id, char *err,
			    size_t errlen)
{
	gid_t taken[MAX_GROUPS];
	int ntaken = 0;
	for (size_t off = 0; off < names->len; off += strlen(names->data + off) + 1) {
		const char *name = names->data + off;
		gid_t gid;
		if (!group_entry(name, taken, ntaken, &gid) &&
		    group_number(name, &gid, err, errlen))
			return -1;
		if (ntaken < MAX_GROUPS)
			taken[ntaken++] = gid;
		if (add_group(id, gid)) {
			snprintf(err, errlen, "more than %d supplementary groups", MAX_GROUPS);
			return -1;
		}
	}
	return 0;
}

/* The user, and the supplementary groups every process of the container
 * gets: its primary group, its /etc/group memberships, then GroupAdd
 * (PROTOCOL.md §4), each once. */
static int resolve_identity(const struct spawn *s, struct identity *id, char *err,
			    size_t errlen)
{
	if (resolve_user(s->user, id, err, errlen))
		return -1;
	struct identity own = *id;
	id->ngroups = 0;
	add_group(id, own.gid);
	/* Kubernetes' SupplementalGroupsPolicy Strict: only the groups asked for. */
	for (int i = 0; i < own.ngroups && !s->c->groups_strict; i++)
		add_group(id, own.groups[i]);
	return add_extra_groups(&s->c->group_add, id, err, errlen);
}

/* The identity the process runs as, for START's reply: "=id UID GID G…\n"
 * on the failure pipe, ahead of any failure report (§4). */
static void report_identity(struct spawn *s, const struct identity *id)
{
	char out[1024];
	int n = snprintf(out, sizeof(out), "=id %u %u", (unsigned)id->uid, (unsigned)id->gid);
	for (int i = 0; i < id->ngroups && n > 0 && (size_t)n < sizeof(out) - 16; i++)
		n += snprintf(out + n, sizeof(out) - (size_t)n, " %u", (unsigned)id->groups[i]);
	if (n > 0 && (size_t)n < sizeof(out) - 1) {
		out[n++] = '\n';
		write_all(s->err_pipe, out, (size_t)n);
	}
}

/* A child's "=id" line (NUL-terminated where its newline was) as the JSON
 * START replies with. */
static void identity_json(const char *line, char *out, size_t cap)
{
	char *end;
	const char *at = line + 4;
	unsigned long uid = strtoul(at, &end, 10);
	unsigned long gid = strtoul(at = end, &end, 10);
	int n = snprintf(out, cap, "{\"uid\":%lu,\"gid\":%lu,\"groups\":[", uid, gid);
	const char *sep = "";
	for (at = end; n > 0 && (size_t)n < cap - 24; at = end) {
		unsigned long group = strtoul(at, &end, 10);
		if (end == at)
			break;
		n += snprintf(out + n, cap - (size_t)n, "%s%lu", sep, group);
		sep = ",";
	}
	if (n > 0 && (size_t)n < cap - 3)
		snprintf(out + n, cap - (size_t)n, "]}");
	else
		out[0] = 0;
}

/* --ulimit and --oom-score-adj, before the user changes (raising a limit or
 * lowering the score takes root). */
static void apply_limits(struct spawn *s)
{
	const struct container *c = s->c;
	for (int i = 0; i < c->nrlimits; i++) {
		struct rlimit rl = {.rlim_cur = c->rlimits[i].soft, .rlim_max = c->rlimits[i].hard};
		if (setrlimit(c->rlimits[i].resource, &rl))
			child_fail(s, "system", errno, "error setting rlimit type %d: %s",
				   c->rlimits[i].resource, errno_text(errno));
	}
	if (!c->oom_score_adj)
		return;
	char value[16];
	int n = snprintf(value, sizeof(value), "%d", c->oom_score_adj);
	if (write_file("/proc/self/oom_score_adj", value, (size_t)n, 0644))
		child_fail(s, "system", errno, "write oom_score_adj: %s", errno_text(errno));
}

int resolve_owner(const char *spec, uid_t *uid, gid_t *gid, char *err, size_t errlen)
{
	struct identity id;
	if (resolve_user(spec, &id, err, errlen))
		return -1;
	*uid = id.uid;
	*gid = id.gid;
	return 0;
}

/* Go's exec.LookPath, which runc's error texts come from. */
static int look_path(const char *name, const char *path_env, char *out, size_t cap,
		     char *err, size_t errlen, int *errnum)
{
	struct stat st;
	if (strchr(name, '/')) {
		if (stat(name, &st)) {
			*errnum = errno;
			/* Go words errno texts in lower case: "no such file or directory". */
			char text[128];
			snprintf(text, sizeof(text), "%s", strerror(errno));
			text[0] = (char)tolower((unsigned char)text[0]);
			snprintf(err, errlen, "exec: \"%s\": stat %s: %s", name, name, text);
			return -1;
		}
		snprintf(out, cap, "%s", name);
		return 0;
	}
	char dirs[8192];
	snprintf(dirs, sizeof(dirs), "%s", path_env ? path_env : DEFAULT_PATH);
	for (char *save = NULL, *dir = strtok_r(dirs, ":", &save); dir;
	     dir = strtok_r(NULL, ":", &save)) {
		char candidate[PATH_MAX];
		snprintf(candidate, sizeof(candidate), "%s/%s", *dir ? dir : ".", name);
		if (!stat(candidate, &st) && S_ISREG(st.st_mode) && (st.st_mode & 0111)) {
			snprintf(out, cap, "%s", candidate);
			return 0;
		}
	}
	*errnum = ENOENT;
	snprintf(err, errlen, "exec: \"%s\": executable file not found in $PATH", name);
	return -1;
}

static void join_namespace(struct spawn *s, pid_t pid, const char *name, int type)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/ns/%s", pid, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || setns(fd, type))
		child_fail(s, "state", errno, "join %s namespace: %s", name, strerror(errno));
	close(fd);
}

/* Docker's --sysctl, written in the container's own net and ipc namespaces
 * (the init's /proc answers for the reader's namespaces). */
static void apply_sysctls(struct spawn *s)
{
	const struct buf *b = &s->c->sysctls;
	for (size_t off = 0; off < b->len;) {
		const char *key = b->data + off;
		const char *value = key + strlen(key) + 1;
		off += strlen(key) + strlen(value) + 2;
		char path[512] = "/proc/sys/";
		size_t n = strlen(path);
		for (const char *k = key; *k && n < sizeof(path) - 1; k++)
			path[n++] = *k == '.' ? '/' : *k;
		path[n] = 0;
		/* runc's words: which of open and write failed, errno as Go says it. */
		int fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0)
			child_fail(s, "invalid", errno, "open %s: %s", path, errno_text(errno));
		if (write_all(fd, value, strlen(value)))
			child_fail(s, "invalid", errno, "write %s: %s", path, errno_text(errno));
		close(fd);
	}
}

static void mount_in_root(struct spawn *s, const char *fstype, const char *where,
			  unsigned long flags)
{
	char target[256];
	snprintf(target, sizeof(target), "%s%s", s->c->rootfs, where);
	if (mount(fstype, target, fstype, flags, NULL))
		child_fail(s, "system", errno, "mount %s: %s", where, strerror(errno));
}

static void enter_container_root(struct spawn *s)
{
	struct container *c = s->c;
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
		child_fail(s, "system", errno, "make mounts private: %s", strerror(errno));
	if (setns(c->net->fd, CLONE_NEWNET))
		child_fail(s, "system", errno, "join network namespace: %s", strerror(errno));
	if (s->ipc_peer_pid)
		join_namespace(s, s->ipc_peer_pid, "ipc", CLONE_NEWIPC);
	apply_sysctls(s);
	if ((*c->hostname && sethostname(c->hostname, strlen(c->hostname))) ||
	    (*c->domainname && setdomainname(c->domainname, strlen(c->domainname))))
		child_fail(s, "system", errno, "set hostname: %s", strerror(errno));
	mount_in_root(s, "proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC);
	TRACE("child: proc mounted");
	/* sysfs shows the network namespace of whoever mounts it. */
	mount_in_root(s, "sysfs", "/sys", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC);
	mount_in_root(s, "mqueue", "/dev/mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC);
	/* Born in the container cgroup (CLONE_INTO_CGROUP): the new cgroup
	 * namespace is rooted there. */
	if (unshare(CLONE_NEWCGROUP))
		child_fail(s, "system", errno, "cgroup namespace: %s", strerror(errno));
	char cgroup[256];
	snprintf(cgroup, sizeof(cgroup), "%s/sys/fs/cgroup", c->rootfs);
	if (mount("cgroup2", cgroup, "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL))
		LOG("mount cgroup2 in container: %s", strerror(errno));
	if (chdir(c->rootfs) || mount(c->rootfs, "/", NULL, MS_MOVE, NULL))
		child_fail(s, "system", errno, "enter container root: %s", strerror(errno));
	char err[512];
	if (security_detach_init_mounts(err, sizeof(err)))
		child_fail(s, "system", errno, "%s", err);
	if (chroot(".") || chdir("/"))
		child_fail(s, "system", errno, "enter container root: %s", strerror(errno));
	if (security_paths(&c->security, err, sizeof(err)))
		child_fail(s, "system", errno, "%s", err);
}

static void join_container(struct spawn *s)
{
	static const struct {
		const char *name;
		int type;
	} spaces[] = {{"ipc", CLONE_NEWIPC}, {"uts", CLONE_NEWUTS}, {"cgroup", CLONE_NEWCGROUP},
		      {"net", CLONE_NEWNET}, {"mnt", CLONE_NEWNS}};
	for (size_t i = 0; i < sizeof(spaces) / sizeof(spaces[0]); i++)
		join_namespace(s, s->main_pid, spaces[i].name, spaces[i].type);
}

/* Builtins that read or write the container's files see them as its
 * processes do (joining a running container, so volumes are there too) or,
 * with no container running, from the init's own mounts. Those about the
 * scratch disk itself (changes, tar-changes) stay in the init's view. */
static void enter_for_builtin(struct spawn *s)
{
	if (!strcmp(s->builtin, "changes") || !strcmp(s->builtin, "tar-changes"))
		return;
	/* connect (port-forward) needs the container's network namespace only,
	 * which the guest holds whether or not its main process runs. */
	if (!strcmp(s->builtin, "connect")) {
		if (setns(s->c->net->fd, CLONE_NEWNET))
			child_fail(s, "system", errno, "join network namespace: %s", strerror(errno));
		return;
	}
	if (s->main_pid) {
		char mountinfo[64];
		snprintf(mountinfo, sizeof(mountinfo), "/proc/%d/mountinfo", s->main_pid);
		builtin_note_mounts(mountinfo, "");
		join_container(s);
		return;
	}
	builtin_note_mounts("/proc/self/mountinfo", s->c->rootfs);
	if (chroot(s->c->rootfs) || chdir("/"))
		child_fail(s, "system", errno, "enter container root: %s", strerror(errno));
}

static void __attribute__((noreturn)) child_main(struct spawn *s)
{
	sigset_t all;
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);

	TRACE("child %d begins", getpid());
	if (s->builtin)
		enter_for_builtin(s);
	else if (s->main)
		enter_container_root(s);
	else
		join_container(s);
	TRACE("child in container");

	setsid();
	if (s->tty) {
		int slave = open(s->slave, O_RDWR);
		if (slave < 0)
			child_fail(s, "system", errno, "open %s: %s", s->slave, strerror(errno));
		ioctl(slave, TIOCSCTTY, 0);
		for (int fd = 0; fd < 3; fd++)
			dup2(slave, fd);
		if (slave > 2)
			close(slave);
	} else {
		int in = s->stdio[0];
		if (in < 0 && (in = open("/dev/null", O_RDONLY)) < 0)
			child_fail(s, "system", errno, "open /dev/null: %s", strerror(errno));
		if (dup2(in, 0) < 0 || dup2(s->stdio[1], 1) < 0 || dup2(s->stdio[2], 2) < 0)
			child_fail(s, "system", errno, "stdio: %s", strerror(errno));
	}

	if (s->builtin) {
		/* Reached the builtin: from here its exit status tells the tale. */
		close(s->err_pipe);
		int status = !strcmp(s->builtin, "connect")
				     ? builtin_connect(s->argv[0] ? s->argv[0] : "")
				     : run_builtin(s->c, s->builtin, s->argv);
		fflush(NULL);
		_exit(status);
	}
	struct identity id;
	char err[900];
	if (resolve_identity(s, &id, err, sizeof(err)))
		child_fail(s, "user", ENOENT, "%s", err);
	apply_limits(s);
	if (!env_get(s->envp, "HOME")) {
		static char home[1100];
		snprintf(home, sizeof(home), "HOME=%s", id.home);
		s->envp[s->envc++] = home;
		s->envp[s->envc] = NULL;
	}
	const char *cwd = *s->cwd ? s->cwd : "/";
	if (mkdir_p(cwd, 0755) && errno != EEXIST)
		LOG("create working directory %s: %s", cwd, strerror(errno));
	if (chdir(cwd))
		child_fail(s, "system", errno, "chdir to cwd (\"%s\") set in config.json failed: %s",
			   cwd, strerror(errno));
	char program[PATH_MAX];
	int errnum = 0;
	if (look_path(s->argv[0], env_get(s->envp, "PATH"), program, sizeof(program), err,
		      sizeof(err), &errnum))
		child_fail(s, "exec", errnum, "%s", err);
	if (security_before_user(&s->c->security, s->privileged, err, sizeof(err)))
		child_fail(s, "system", errno, "%s", err);
	if (setgroups((size_t)id.ngroups, id.groups) || setgid(id.gid) || setuid(id.uid))
		child_fail(s, "user", errno, "set user %s: %s", s->user, strerror(errno));
	if (security_after_user(&s->c->security, s->privileged, err, sizeof(err)))
		child_fail(s, "system", errno, "%s", err);
	report_identity(s, &id);
	TRACE("child execs %s", program);
	execve(program, s->argv, s->envp);
	int saved = errno;
	struct stat st;
	if (saved == EACCES && !stat(program, &st) && S_ISDIR(st.st_mode))
		child_fail(s, "exec", EISDIR, "exec: \"%s\": is a directory", s->argv[0]);
	if (saved == EACCES)
		child_fail(s, "exec", saved, "exec: \"%s\": permission denied", s->argv[0]);
	child_fail(s, "exec", saved, "exec %s: %s", s->argv[0], strerror(saved));
}

static char **string_array(const struct json *arr, size_t extra, size_t *count)
{
	size_t n = 0;
	for (const struct json *v = arr ? arr->child : NULL; v; v = v->next)
		if (v->type == J_STR)
			n++;
	char **out = calloc(n + extra + 1, sizeof(char *));
	if (!out)
		return NULL;
	size_t i = 0;
	for (const struct json *v = arr ? arr->child : NULL; v; v = v->next)
		if (v->type == J_STR)
			out[i++] = v->str;
	*count = i;
	return out;
}

static int open_pty(struct proc *p, struct spawn *s, const struct json *spec, struct err *e)
{
	char ptmx[256];
	snprintf(ptmx, sizeof(ptmx), "%s/dev/pts/ptmx", s->c->rootfs);
	int master = open(ptmx, O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
	if (master < 0) {
		set_err(e, "system", errno, "open ptmx: %s", strerror(errno));
		return -1;
	}
	int unlock = 0, n = 0;
	if (ioctl(master, TIOCSPTLCK, &unlock) || ioctl(master, TIOCGPTN, &n)) {
		set_err(e, "system", errno, "pty: %s", strerror(errno));
		close(master);
		return -1;
	}
	struct winsize ws = {.ws_row = (unsigned short)json_int(spec, "height", 0),
			     .ws_col = (unsigned short)json_int(spec, "width", 0)};
	if (ws.ws_row && ws.ws_col)
		ioctl(master, TIOCSWINSZ, &ws);
	snprintf(s->slave, sizeof(s->slave), "/dev/pts/%d", n);
	p->out_fd = master;
	p->in_fd = dup(master);
	if (p->in_fd >= 0)
		fcntl(p->in_fd, F_SETFD, FD_CLOEXEC);
	p->err_fd = -1;
	return 0;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* The main process of a running container, or 0. */
static pid_t running_main(const struct container *c)
{
	return c && c->main_pid && !c->main_exited ? c->main_pid : 0;
}

/* --pid/--ipc container:X: X must be running in this guest. */
static int peer_main(const char *peer_id, pid_t *out, struct err *e)
{
	*out = 0;
	if (!*peer_id)
		return 0;
	*out = running_main(container_find(peer_id));
	if (!*out) {
		set_err(e, "state", ESRCH, "container %s is not running", peer_id);
		return -1;
	}
	return 0;
}

/* clone3 with the child born in the pid namespace of `pidns_of` (when set):
 * pid_for_children points there for the call, then back at our own, so we
 * stay the parent and reaper. */
static pid_t spawn_child(struct spawn *s, struct clone_args3 *args, pid_t pidns_of,
			 struct err *e)
{
	int target = -1, own = -1;
	if (pidns_of) {
		char path[64];
		snprintf(path, sizeof(path), "/proc/%d/ns/pid", pidns_of);
		target = open(path, O_RDONLY | O_CLOEXEC);
		own = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
		if (target < 0 || own < 0 || setns(target, CLONE_NEWPID)) {
			set_err(e, "state", errno, "container is not running: %s", strerror(errno));
			close_fd(&target);
			close_fd(&own);
			return -1;
		}
		close_fd(&target);
	}
	pid_t pid = (pid_t)syscall(SYS_clone3_, args, sizeof(*args));
	if (pid == 0)
		child_main(s);
	int saved = errno;
	if (own >= 0 && setns(own, CLONE_NEWPID))
		LOG("cannot return to own pid namespace: %s", strerror(errno));
	close_fd(&own);
	if (pid < 0)
		set_err(e, "system", saved, "clone3: %s", strerror(saved));
	return pid;
}

int process_start(const struct json *spec, struct proc *p, struct container *c, struct err *e)
{
	pid_t main_pid = running_main(c);
	struct spawn s = {.spec = spec, .main = p->main, .c = c, .main_pid = main_pid,
			  .stdio = {-1, -1, -1}, .err_pipe = -1};
	size_t argc = 0;
	s.argv = string_array(json_get(spec, "args"), 0, &argc);
	s.envp = string_array(json_get(spec, "env"), 1, &s.envc);
	s.cwd = json_str(spec, "cwd", "/");
	s.builtin = json_str(spec, "builtin", NULL);
	if (s.builtin && !*s.builtin)
		s.builtin = NULL;
	s.user = json_str(spec, "user", "");
	s.tty = p->tty = json_bool(spec, "tty", 0);
	s.stdin_open = json_bool(spec, "stdin", 0);
	s.privileged = !s.main && json_bool(spec, "privileged", 0);
	int rc = -1;
	int err_pipe[2] = {-1, -1};
	int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, errs_pipe[2] = {-1, -1};
	pid_t pidns_of = main_pid;
	p->in_fd = p->out_fd = p->err_fd = -1;
	if (!s.argv || !s.envp || (argc == 0 && !s.builtin)) {
		set_err(e, "invalid", EINVAL, "START needs args");
		goto out;
	}
	if (s.main && (peer_main(c->pid_peer, &pidns_of, e) ||
		       peer_main(c->ipc_peer, &s.ipc_peer_pid, e)))
		goto out;
	if (pipe2(err_pipe, O_CLOEXEC)) {
		set_err(e, "system", errno, "pipe: %s", strerror(errno));
		goto out;
	}
	s.err_pipe = err_pipe[1];
	if (s.tty) {
		if (open_pty(p, &s, spec, e))
			goto out;
	} else {
		if ((s.stdin_open && pipe2(in_pipe, O_CLOEXEC)) || pipe2(out_pipe, O_CLOEXEC) ||
		    pipe2(errs_pipe, O_CLOEXEC)) {
			set_err(e, "system", errno, "pipe: %s", strerror(errno));
			goto out;
		}
		s.stdio[0] = in_pipe[0];
		s.stdio[1] = out_pipe[1];
		s.stdio[2] = errs_pipe[1];
		p->in_fd = in_pipe[1];
		p->out_fd = out_pipe[0];
		p->err_fd = errs_pipe[0];
		in_pipe[1] = out_pipe[0] = errs_pipe[0] = -1;
	}

	/* Children are born in the container cgroup (CLONE_INTO_CGROUP): moving
	 * a task between cgroups waits for an RCU grace period, which costs
	 * ~20 ms under TCG. */
	int cgroup_fd = open(c->cgroup, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cgroup_fd < 0) {
		set_err(e, "system", errno, "open %s: %s", c->cgroup, strerror(errno));
		goto out;
	}
	struct clone_args3 args = {.exit_signal = SIGCHLD, .cgroup = (uint64_t)cgroup_fd,
				   .flags = CLONE_INTO_CGROUP_};
	if (s.builtin)
		args.flags = 0; /* the init's own work: not the container's, not frozen with it */
	if (s.main)
		args.flags |= CLONE_NEWNS | CLONE_NEWUTS | (pidns_of ? 0 : CLONE_NEWPID) |
			      (s.ipc_peer_pid ? 0 : CLONE_NEWIPC);
	pid_t pid = spawn_child(&s, &args, pidns_of, e);
	close(cgroup_fd);
	if (pid < 0)
		goto out;
	close_fd(&err_pipe[1]);
	close_fd(&s.stdio[0]);
	close_fd(&s.stdio[1]);
	close_fd(&s.stdio[2]);
	char report[2048];
	size_t got = 0;
	for (;;) {
		ssize_t r = read(err_pipe[0], report + got, sizeof(report) - 1 - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
		if (got == sizeof(report) - 1)
			break;
	}
	report[got] = 0;
	if (!strncmp(report, "=id ", 4) && strchr(report, '\n')) {
		char *rest = strchr(report, '\n');
		*rest++ = 0;
		identity_json(report, p->user, sizeof(p->user));
		got -= (size_t)(rest - report);
		memmove(report, rest, got + 1);
	}
	if (got) {
		waitpid(pid, NULL, 0);
		char *kind = report, *num = strchr(report, '\n'), *msg = num ? strchr(num + 1, '\n') : NULL;
		if (!num || !msg) {
			set_err(e, "system", EIO, "process failed to start");
		} else {
			*num++ = 0;
			*msg++ = 0;
			set_err(e, !strcmp(kind, "exec") ? "exec" : !strcmp(kind, "user") ? "user" :
				   !strcmp(kind, "state") ? "state" : "system",
				atoi(num), "%s", msg);
		}
		goto out;
	}
	p->pid = pid;
	if (p->in_fd >= 0)
		fcntl(p->in_fd, F_SETFL, fcntl(p->in_fd, F_GETFL) | O_NONBLOCK);
	if (p->out_fd >= 0)
		fcntl(p->out_fd, F_SETFL, fcntl(p->out_fd, F_GETFL) | O_NONBLOCK);
	if (p->err_fd >= 0)
		fcntl(p->err_fd, F_SETFL, fcntl(p->err_fd, F_GETFL) | O_NONBLOCK);
	rc = 0;
out:
	if (rc) {
		close_fd(&p->in_fd);
		close_fd(&p->out_fd);
		close_fd(&p->err_fd);
	}
	close_fd(&err_pipe[0]);
	close_fd(&err_pipe[1]);
	close_fd(&in_pipe[0]);
	close_fd(&in_pipe[1]);
	close_fd(&out_pipe[0]);
	close_fd(&out_pipe[1]);
	close_fd(&errs_pipe[0]);
	close_fd(&errs_pipe[1]);
	close_fd(&s.stdio[0]);
	close_fd(&s.stdio[1]);
	close_fd(&s.stdio[2]);
	free(s.argv);
	free(s.envp);
	return rc;
}
