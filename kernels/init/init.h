/* hbd guest init: shared declarations. See PROTOCOL.md for the wire format. */
#ifndef HBD_INIT_H
#define HBD_INIT_H

#include <stdint.h>
#include <sys/types.h>

#include "json.h"

#define PROTOCOL_VERSION 1
#define FRAME_HEADER 12
#define MAX_FRAME (1024 * 1024)
#define STREAM_CHUNK (64 * 1024)
/* Stop reading process output while this much is queued for the host. */
#define OUTPUT_HIGH_WATER (1024 * 1024)

enum frame_type {
	T_HELLO = 0x01,
	T_SETUP = 0x02,
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
	T_STDIN = 0x20,
	T_STDIN_EOF = 0x21,
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
#define ROOTFS ROOT "/rootfs"
#define CGROUP "/sys/fs/cgroup/container"

/* An error to report to the host: kind per PROTOCOL.md §8. */
struct err {
	const char *kind;
	int errnum;
	char msg[768];
};

void set_err(struct err *e, const char *kind, int errnum, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

struct proc {
	uint32_t id;
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
	struct proc *next;
};

/* sandbox.c */
int sandbox_prepare_rootfs(const char *image, const char *scratch, struct err *e);
int sandbox_setup(const struct json *spec, struct err *e);
int sandbox_ready(void);
void sandbox_shutdown(void);
long long cgroup_oom_kills(void);

/* stats.c */
void stats_json(struct buf *b);
void ps_json(struct buf *b);
int cgroup_update(const struct json *req, struct err *e);

/* archive.c */
int run_builtin(const char *name, char **args);
void builtin_note_mounts(const char *mountinfo, const char *prefix);
void record_created(const char *path);

/* copyup.c: fill an empty volume mounted at VOLUME with what SOURCE holds. */
int copy_up(const char *source, const char *volume, struct err *e);

/* process.c */
int process_start(const struct json *spec, struct proc *p, pid_t main_pid, struct err *e);
/* user[:group] as a container's User names it, from its /etc/passwd and /etc/group. */
int resolve_owner(const char *spec, uid_t *uid, gid_t *gid, char *err, size_t errlen);

/* netconf.c */
int net_loopback_up(void);
int net_configure(const struct json *spec, struct err *e);

#endif
