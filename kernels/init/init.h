/* hbd guest init: shared declarations. See PROTOCOL.md for the wire format. */
#ifndef HBD_INIT_H
#define HBD_INIT_H

#include <stdint.h>
#include <sys/types.h>

#include "json.h"

#define PROTOCOL_VERSION 2
#define FRAME_HEADER 12
#define MAX_FRAME (1024 * 1024)
#define STREAM_CHUNK (64 * 1024)
/* Stop reading process output while this much is queued for the host. */
#define OUTPUT_HIGH_WATER (1024 * 1024)

enum frame_type {
	T_HELLO = 0x01,
	T_SANDBOX = 0x02,
	T_START = 0x03,
	T_SIGNAL = 0x04,
	T_RESIZE = 0x05,
	T_STATE = 0x06,
	T_RELEASE = 0x07,
	T_STATS = 0x08,
	T_POWEROFF = 0x09,
	T_PING = 0x0A,
	T_PS = 0x0B,
	T_UPDATE = 0x0C,
	T_CREATE = 0x0D,
	T_DESTROY = 0x0E,
	T_NETWORK = 0x0F,
	T_FREEZE = 0x10,
	T_FILES = 0x11,
	T_STDIN = 0x20,
	T_STDIN_EOF = 0x21,
	T_OUTPUT_ACK = 0x22,
	T_ACK = 0x80,
	T_ERROR = 0x81,
	T_EVENT = 0x82,
	T_SYNC = 0x83,
	T_STDOUT = 0xA0,
	T_STDERR = 0xA1,
	T_STDOUT_EOF = 0xA2,
	T_STDERR_EOF = 0xA3,
	T_STDIN_ACK = 0xA4,
};

#define ROOT "/run/hbd"
/* Every disk is mounted once, by serial, under DISKS; containers bind from there. */
#define DISKS ROOT "/disks"
/* The guest's shared filesystem (virtiofs) from the host. */
#define SHARED ROOT "/fs"
/* Container ids, netns ids and disk serials are host-chosen names of at most
 * ID_MAX characters from [A-Za-z0-9_.-]. */
#define ID_MAX 64
#define MAX_FILES 16
#define MAX_ROUTES 16

/* An error to report to the host: kind per PROTOCOL.md §9. */
struct err {
	const char *kind;
	int errnum;
	char msg[768];
};

void set_err(struct err *e, const char *kind, int errnum, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* A network namespace the host named; containers join one. */
struct netns {
	char id[ID_MAX + 1];
	int fd;
	int nroutes;
	char routes[MAX_ROUTES][2][48]; /* destination, gateway: what NETWORK installed */
	struct netns *next;
};

/* Docker's --ulimit: one setrlimit for every process of a container. */
#define MAX_RLIMITS 16
struct rlimit_spec {
	int resource;
	unsigned long long soft, hard;
};

/* A file hbd owns inside a container (/etc/hosts…): staged on a guest tmpfs
 * and bind-mounted over its target, so FILES can rewrite it in place. */
struct owned_file {
	char target[256];
	char staged[160];
};

/* Docker's security settings (CREATE, PROTOCOL.md §3), applied by
 * security.c to every process of the container. */
struct security {
	int has_caps;          /* else the processes keep every capability */
	uint64_t caps[5];      /* bounding, effective, permitted, inheritable, ambient */
	int no_new_privs;
	struct buf seccomp;    /* struct sock_filter[], or empty for none */
	struct buf masked;     /* "path\0"… */
	struct buf readonly;   /* "path\0"… */
};

struct container {
	char id[ID_MAX + 1];
	char dir[128];        /* ROOT/c/<id> */
	char rootfs[160];     /* dir/rootfs: the container's root, overlay + mounts */
	char cgroup[128];     /* /sys/fs/cgroup/c-<id> */
	char image[ID_MAX + 1], scratch[ID_MAX + 1];
	char hostname[65], domainname[65];
	char pid_peer[ID_MAX + 1]; /* shares this container's pid namespace ("" own) */
	char ipc_peer[ID_MAX + 1]; /* and this one's ipc namespace */
	struct netns *net;
	int ndisks;
	char disks[32][ID_MAX + 1]; /* volume disks it holds (besides image, scratch) */
	int nfiles;
	struct owned_file files[MAX_FILES];
	struct buf sysctls;   /* "key\0value\0"…, applied by its main process */
	/* What every process of the container gets (main and exec): */
	struct buf group_add; /* "name\0"…: Docker's GroupAdd, resolved at START */
	int groups_strict;    /* no supplementary groups from /etc/group memberships */
	int nrlimits;
	struct rlimit_spec rlimits[MAX_RLIMITS];
	int oom_score_adj;
	struct security security;
	pid_t main_pid;       /* 0 until its main process starts */
	int main_exited;
	int destroying;       /* DESTROY is waiting for its processes to go */
	uint32_t destroy_request;
	struct container *next;
};

struct proc {
	uint32_t id;
	char container[ID_MAX + 1];
	pid_t pid;
	int main;
	int tty;
	int reaped;
	int exit_code, signal, oom;
	int out_fd, err_fd;   /* -1 once their EOF was sent */
	int in_fd;            /* stdin pipe (write end) or pty master; -1 when closed */
	struct buf in_pending;
	size_t in_off;
	int in_eof_requested;
	uint32_t in_ack;      /* stdin bytes consumed and not yet acknowledged */
	int exit_sent;
	long long oom_before;
	/* The identity it runs as, for START's reply: {"uid","gid","groups"} as
	 * JSON ("" for a builtin, which runs as the init does). */
	char user[1024];
	/* Output frames (STDOUT, STDERR and their EOFs) are numbered from 0 per
	 * process. While the host acknowledges output (PROTOCOL.md §6), the ones
	 * it has not acknowledged stay in `retained`, whole and in order, so a
	 * host that died before storing them gets them again. */
	uint64_t out_seq;      /* frames queued so far */
	uint64_t written_seq;  /* frames written whole to the current host */
	uint64_t retained_seq; /* number of the first frame in retained */
	struct buf retained;
	struct proc *next;
};

/* init.c: booted as a template (hbd.template on the kernel command line). */
extern int template_mode;

/* init.c: replies for requests answered later (DESTROY). */
void reply_ack_later(uint32_t id);
void reply_error_later(uint32_t id, const struct err *e);

/* sandbox.c: the guest as a whole. */
int sandbox_setup(const struct json *spec, struct err *e);
int sandbox_ready(void);
void sandbox_shutdown(void);

/* container.c */
int valid_id(const char *id);
void containers_prepare_boot(void);
struct container *container_find(const char *id);
int container_create(const struct json *spec, struct err *e);
int container_destroy(struct container *c, uint32_t request, struct err *e);
void containers_progress(void); /* finish DESTROYs whose processes are gone */
int container_freeze(struct container *c, int frozen, struct err *e);
int container_files(struct container *c, const struct json *files, struct err *e);
long long cgroup_oom_kills(const struct container *c);
void container_main_exited(struct container *c);
void containers_unmount_all(void);
/* Paths of a container's layers: the scratch disk's upper dir, the image disk. */
void container_upper(const struct container *c, char *out, size_t cap);
void container_lower(const struct container *c, char *out, size_t cap);
void container_created_list(const struct container *c, char *out, size_t cap);

/* stats.c */
/* A number of the container's cgroup FILE: its content (0 for "max"), or,
 * with KEY, the number after KEY at the start of one of its lines (0 if none). */
long long cgroup_file(const struct container *c, const char *file, const char *key);
void stats_json(const struct container *c, struct buf *b);
void ps_json(const struct container *c, struct buf *b);
int cgroup_update(const struct container *c, const struct json *req, struct err *e);

/* archive.c */
int run_builtin(const struct container *c, const char *name, char **args);
void builtin_note_mounts(const char *mountinfo, const char *prefix);
void record_created(const struct container *c, const char *path);

/* portfwd.c: the `connect PORT` builtin, run in the pod's network namespace. */
int builtin_connect(const char *port_text);

/* copyup.c: fill an empty volume mounted at VOLUME with what SOURCE holds. */
int copy_up(const char *source, const char *volume, struct err *e);

/* rlimit.c: RLIMIT_<NAME> for a --ulimit name (any case), or -1. */
int rlimit_resource(const char *name);

/* security.c: CREATE's security fields, then their steps in a process
 * being started: paths (main process, in its new mount namespace), before
 * and after it changes user. Failures word runc's errors into err. */
int security_copy(struct security *sec, const struct json *spec, struct err *e);
void security_free(struct security *sec);
int security_paths(const struct security *sec, char *err, size_t errlen);
int security_detach_init_mounts(char *err, size_t errlen);
int security_before_user(const struct security *sec, int privileged, char *err, size_t errlen);
int security_after_user(const struct security *sec, int privileged, char *err, size_t errlen);

/* dockerinit.c: run as /sbin/docker-init (docker run --init). */
int docker_init_main(int argc, char **argv);
/* Where CREATE binds the init's own binary for --init. */
#define DOCKER_INIT_PATH "/sbin/docker-init"

/* process.c */
int process_start(const struct json *spec, struct proc *p, struct container *c,
		  struct err *e);
/* user[:group] as a container's User names it, from its /etc/passwd and /etc/group. */
int resolve_owner(const char *spec, uid_t *uid, gid_t *gid, char *err, size_t errlen);

/* netconf.c */
int net_loopback_up(void);
int net_name_nics(const struct json *nics, struct err *e);
struct netns *netns_get(const char *id, int create, struct err *e);
int network_config(const struct json *req, struct err *e);
int netns_enter(const struct netns *n); /* returns the fd to return with, or -1 */
void netns_leave(int own);

#endif
