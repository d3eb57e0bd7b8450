/* hbd guest init: PID 1 of an initramfs that holds nothing else.
 *
 * One single-threaded poll loop serves the host channel (a virtio-serial
 * port, PROTOCOL.md), the stdio of every container's processes and SIGCHLD.
 * PID 1 must never die: every failure is reported to the host as ERROR. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "init.h"
#include "util.h"

#define PORT_NAME "hbd.0"
#define SYNC_MAGIC "hbd-sync-v1\0\0\0\0\0"
#define MAX_POLL 256

static int chan = -1;
static int connected;
static struct buf inq;          /* bytes received, not yet a whole frame */
static struct buf outq;         /* frames to send */
static size_t outq_off;         /* bytes of outq already written */
static size_t outq_frame;       /* start of the frame outq_off is in */
/* Nothing is written to a host until it has said HELLO: it discards
 * whatever comes before our SYNC, so earlier bytes would be lost. */
static int awaiting_hello = 1;
/* The host acknowledges output frames (its HELLO said so): keep them until
 * it does. retained_total is the bytes all processes keep. */
static int host_acks;
static size_t retained_total;
static struct proc *procs;
static long long boot_ms;
static int sigfd = -1;
static int poweroff_requested;
/* hbd.template on the command line: this guest becomes a template that hbd
 * snapshots once its init waits for a host; clones of it go on from here. */
int template_mode;

void set_err(struct err *e, const char *kind, int errnum, const char *fmt, ...)
{
	e->kind = kind;
	e->errnum = errnum;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
}

/* -- frames out ---------------------------------------------------------- */

static void frame_into(struct buf *out, uint16_t type, uint32_t id, const void *payload,
		       size_t len);

static void queue_frame(uint16_t type, uint32_t id, const void *payload, size_t len)
{
	frame_into(&outq, type, id, payload, len);
}

static void queue_json(uint16_t type, uint32_t id, struct buf *json)
{
	queue_frame(type, id, json->data ? json->data : "{}", json->data ? json->len : 2);
	buf_free(json);
}

static void ack(uint32_t id, struct buf *json)
{
	queue_json(T_ACK, id, json);
}

static void ack_empty(uint32_t id)
{
	queue_frame(T_ACK, id, "{}", 2);
}

static void reply_error(uint32_t id, const struct err *e)
{
	struct buf b = {0};
	buf_str(&b, "{\"message\":");
	buf_json_string(&b, e->msg);
	buf_printf(&b, ",\"errno\":%d,\"kind\":", e->errnum);
	buf_json_string(&b, e->kind ? e->kind : "system");
	buf_str(&b, "}");
	queue_json(T_ERROR, id, &b);
}

void reply_ack_later(uint32_t id)
{
	ack_empty(id);
}

void reply_error_later(uint32_t id, const struct err *e)
{
	reply_error(id, e);
}

static void error_simple(uint32_t id, const char *kind, int errnum, const char *msg)
{
	struct err e;
	set_err(&e, kind, errnum, "%s", msg);
	reply_error(id, &e);
}

static size_t outq_pending(void)
{
	return outq.len - outq_off;
}

static size_t frame_size_at(size_t off)
{
	uint32_t len;
	memcpy(&len, outq.data + off, 4);
	return FRAME_HEADER + len;
}

static struct proc *find_proc(uint32_t id);

static int is_output(uint16_t type)
{
	return type >= T_STDOUT && type <= T_STDERR_EOF;
}

/* The frame at `off` has been written whole to the host. */
static void note_written(size_t off)
{
	uint16_t type;
	uint32_t id;
	memcpy(&type, outq.data + off + 4, 2);
	memcpy(&id, outq.data + off + 8, 4);
	struct proc *p = is_output(type) ? find_proc(id) : NULL;
	if (p)
		p->written_seq++;
}

static void flush_out(void)
{
	while (connected && !awaiting_hello && outq_pending()) {
		ssize_t n = write(chan, outq.data + outq_off, outq_pending());
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break; /* EAGAIN: the host is slow or gone; poll tells us when to go on */
		}
		outq_off += (size_t)n;
		while (outq_frame < outq_off && outq_frame + frame_size_at(outq_frame) <= outq_off) {
			note_written(outq_frame);
			outq_frame += frame_size_at(outq_frame);
		}
	}
	if (outq_off && outq_off == outq.len) {
		outq.len = outq_off = outq_frame = 0;
	} else if (outq_frame > 4 * 1024 * 1024) {
		memmove(outq.data, outq.data + outq_frame, outq.len - outq_frame);
		outq.len -= outq_frame;
		outq_off -= outq_frame;
		outq_frame = 0;
	}
}

/* The host went away: the frame it was reading goes again, whole, to the
 * next one (after our SYNC, so it cannot be mistaken for garbage). */
static void watch_for_host(int on);

static void host_lost(void)
{
	connected = 0;
	watch_for_host(1);
	awaiting_hello = 1;
	inq.len = 0;
	outq_off = outq_frame;
}

/* SYNC and the HELLO reply go to the next frame boundary, ahead of every
 * frame queued while no host was listening. */
static void queue_first(const void *frames, size_t len)
{
	size_t at = outq_off == outq_frame ? outq_off : outq_frame + frame_size_at(outq_frame);
	size_t tail = outq.len - at;
	buf_add(&outq, frames, len); /* grows the buffer; the bytes are placed below */
	memmove(outq.data + at + len, outq.data + at, tail);
	memcpy(outq.data + at, frames, len);
}

/* -- processes ------------------------------------------------------------ */

static struct proc *find_proc(uint32_t id)
{
	for (struct proc *p = procs; p; p = p->next)
		if (p->id == id)
			return p;
	return NULL;
}

static void close_stdin(struct proc *p)
{
	if (p->in_fd >= 0) {
		close(p->in_fd);
		p->in_fd = -1;
	}
	/* Whatever was still pending counts as consumed: the host must not stall. */
	p->in_ack += (uint32_t)(p->in_pending.len - p->in_off);
	buf_free(&p->in_pending);
	p->in_off = 0;
}

static void proc_state_json(struct buf *b, const struct proc *p)
{
	buf_printf(b, "{\"proc\":%u,\"container\":", p->id);
	buf_json_string(b, p->container);
	buf_printf(b,
		   ",\"pid\":%d,\"main\":%s,\"running\":%s,\"exit_code\":%d,"
		   "\"signal\":%d,\"oom_killed\":%s}",
		   p->pid, p->main ? "true" : "false", p->exit_sent ? "false" : "true",
		   p->exit_code, p->signal, p->oom ? "true" : "false");
}

static void maybe_report_exit(struct proc *p)
{
	if (p->exit_sent || !p->reaped || p->out_fd >= 0 || p->err_fd >= 0)
		return;
	close_stdin(p);
	struct buf b = {0};
	buf_printf(&b,
		   "{\"type\":\"exit\",\"proc\":%u,\"exit_code\":%d,\"signal\":%d,"
		   "\"oom_killed\":%s}",
		   p->id, p->exit_code, p->signal, p->oom ? "true" : "false");
	queue_json(T_EVENT, 0, &b);
	p->exit_sent = 1;
	TRACE("process %u exit reported", p->id);
}

static void reap(void)
{
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG | __WALL);
		if (pid <= 0)
			return;
		for (struct proc *p = procs; p; p = p->next) {
			if (p->pid != pid || p->reaped)
				continue;
			p->reaped = 1;
			TRACE("process %u reaped", p->id);
			if (WIFSIGNALED(status)) {
				p->signal = WTERMSIG(status);
				p->exit_code = 128 + p->signal;
			} else {
				p->exit_code = WEXITSTATUS(status);
			}
			struct container *c = container_find(p->container);
			if (c && cgroup_oom_kills(c) > p->oom_before) {
				p->oom = p->signal == SIGKILL;
				if (p->main) {
					struct buf b = {0};
					buf_str(&b, "{\"type\":\"oom\",\"container\":");
					buf_json_string(&b, p->container);
					buf_str(&b, "}");
					queue_json(T_EVENT, 0, &b);
				}
			}
			if (c && p->main)
				container_main_exited(c);
		}
	}
}

/* -- output kept until the host has it (PROTOCOL.md §6) ---------------------- */

static void queue_output(struct proc *p, uint16_t type, const void *data, size_t len)
{
	queue_frame(type, p->id, data, len);
	p->out_seq++;
	if (host_acks) {
		size_t before = p->retained.len;
		frame_into(&p->retained, type, p->id, data, len);
		retained_total += p->retained.len - before;
	} else {
		p->retained_seq = p->out_seq;
	}
}

/* Forget the retained frames numbered below `upto`: the host has them. */
static void retained_trim(struct proc *p, uint64_t upto)
{
	size_t off = 0;
	while (p->retained_seq < upto && off < p->retained.len) {
		uint32_t len;
		memcpy(&len, p->retained.data + off, 4);
		off += FRAME_HEADER + len;
		p->retained_seq++;
	}
	if (!off)
		return;
	memmove(p->retained.data, p->retained.data + off, p->retained.len - off);
	p->retained.len -= off;
	retained_total -= off;
}

static void retained_free(struct proc *p)
{
	retained_total -= p->retained.len;
	buf_free(&p->retained);
	p->retained_seq = p->out_seq;
}

static void handle_output_ack(struct proc *p, const char *payload, uint32_t len)
{
	uint64_t count;
	if (len != sizeof(count))
		return;
	memcpy(&count, payload, sizeof(count));
	retained_trim(p, count);
}

/* Where a returning host wants a process's output from: where it says when
 * it names the process, else after what reached the last host; never past
 * what was written nor before what we still have. */
static uint64_t resume_point(const struct proc *p, const struct json *resume)
{
	uint64_t from = p->written_seq;
	const struct json *r = resume && resume->type == J_ARR ? resume->child : NULL;
	for (; r; r = r->next) {
		long long n = json_int(r, "from", -1);
		if (json_int(r, "proc", -1) == (long long)p->id && n >= 0 &&
		    !strcmp(json_str(r, "container", ""), p->container))
			from = (uint64_t)n;
	}
	uint64_t lowest = p->retained_seq < p->written_seq ? p->retained_seq : p->written_seq;
	if (from > p->written_seq)
		from = p->written_seq;
	return from < lowest ? lowest : from;
}

/* Frames `from` to what was written, again, into `frames`; the ones not
 * yet written are still queued after them. */
static void queue_replay(struct proc *p, uint64_t from, struct buf *frames)
{
	retained_trim(p, from);
	size_t off = 0;
	for (uint64_t seq = p->retained_seq; seq < p->written_seq && off < p->retained.len; seq++) {
		uint32_t len;
		memcpy(&len, p->retained.data + off, 4);
		buf_add(frames, p->retained.data + off, FRAME_HEADER + len);
		off += FRAME_HEADER + len;
	}
	p->written_seq = from;
}

static void read_output(struct proc *p, int *fd, uint16_t type, uint16_t eof_type)
{
	char chunk[STREAM_CHUNK];
	ssize_t n = read(*fd, chunk, sizeof(chunk));
	if (n > 0) {
		queue_output(p, type, chunk, (size_t)n);
		return;
	}
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	/* EOF, or EIO from a pty master once every slave is closed. */
	close(*fd);
	if (p->tty && fd == &p->out_fd && p->in_fd >= 0)
		close_stdin(p);
	*fd = -1;
	queue_output(p, eof_type, NULL, 0);
}

static void write_stdin(struct proc *p)
{
	while (p->in_fd >= 0 && p->in_off < p->in_pending.len) {
		ssize_t n = write(p->in_fd, p->in_pending.data + p->in_off,
				  p->in_pending.len - p->in_off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				close_stdin(p); /* EPIPE: the process closed its stdin */
			return;
		}
		p->in_off += (size_t)n;
		p->in_ack += (uint32_t)n;
	}
	if (p->in_off == p->in_pending.len) {
		buf_free(&p->in_pending);
		p->in_off = 0;
		if (p->in_eof_requested && !p->tty)
			close_stdin(p);
	}
}

static void send_stdin_acks(void)
{
	for (struct proc *p = procs; p; p = p->next) {
		if (!p->in_ack)
			continue;
		uint32_t n = p->in_ack;
		queue_frame(T_STDIN_ACK, p->id, &n, sizeof(n));
		p->in_ack = 0;
	}
}

/* -- requests ---------------------------------------------------------------- */

static void frame_into(struct buf *out, uint16_t type, uint32_t id, const void *payload,
		       size_t len)
{
	unsigned char header[FRAME_HEADER];
	uint32_t l = (uint32_t)len;
	uint16_t flags = 0;
	memcpy(header, &l, 4);
	memcpy(header + 4, &type, 2);
	memcpy(header + 6, &flags, 2);
	memcpy(header + 8, &id, 4);
	buf_add(out, header, sizeof(header));
	if (len)
		buf_add(out, payload, len);
}

/* SYNC, the reply, then the output the last host may not have kept (from
 * where this host asks), ahead of everything queued since. */
static void handle_hello(uint32_t id, const struct json *req)
{
	const char *nonce = json_str(req, "nonce", "");
	const struct json *resume = json_get(req, "resume");
	struct buf sync = {0}, reply = {0}, frames = {0}, replay = {0};
	buf_add(&sync, SYNC_MAGIC, 16);
	buf_str(&sync, nonce);
	struct utsname u;
	uname(&u);
	buf_printf(&reply, "{\"version\":%d,\"kernel\":", PROTOCOL_VERSION);
	buf_json_string(&reply, u.release);
	buf_printf(&reply, ",\"boot_ms\":%lld,\"output\":[", boot_ms);
	for (struct proc *p = procs; p; p = p->next) {
		uint64_t from = resume_point(p, resume);
		queue_replay(p, from, &replay);
		buf_printf(&reply, "{\"proc\":%u,\"from\":%llu}%s", p->id,
			   (unsigned long long)from, p->next ? "," : "");
	}
	/* What this init can do beyond version 2 as first written (PROTOCOL.md
	 * §1, "Features"): a host that sees none of them does without. */
	buf_str(&reply, "],\"features\":[\"connect\"]}");
	host_acks = json_bool(req, "output_acks", 0);
	for (struct proc *p = procs; p && !host_acks; p = p->next)
		retained_free(p);
	frame_into(&frames, T_SYNC, 0, sync.data, sync.len);
	frame_into(&frames, T_ACK, id, reply.data, reply.len);
	if (replay.len)
		buf_add(&frames, replay.data, replay.len);
	queue_first(frames.data, frames.len);
	awaiting_hello = 0;
	buf_free(&sync);
	buf_free(&reply);
	buf_free(&frames);
	buf_free(&replay);
}

static void handle_start(uint32_t id, const struct json *req)
{
	long long proc_id = json_int(req, "proc", -1);
	int is_main = json_bool(req, "main", 0);
	struct err e = {0};
	if (proc_id <= 0 || proc_id > 0xffffffffLL)
		return error_simple(id, "invalid", EINVAL, "START needs a proc id");
	if (find_proc((uint32_t)proc_id))
		return error_simple(id, "state", EEXIST, "proc id already in use");
	struct container *c = container_find(json_str(req, "container", ""));
	if (!c)
		return error_simple(id, "notfound", ENOENT, "no such container");
	if (c->destroying)
		return error_simple(id, "state", ESRCH, "the container is being destroyed");
	if (is_main && c->main_pid)
		return error_simple(id, "state", EBUSY, "the container's main process already ran");
	int builtin = *json_str(req, "builtin", "") != 0;
	if (is_main && builtin)
		return error_simple(id, "invalid", EINVAL, "a builtin cannot be the main process");
	if (!is_main && !builtin && (!c->main_pid || c->main_exited))
		return error_simple(id, "state", ESRCH, "the container is not running");
	struct proc *p = calloc(1, sizeof(*p));
	if (!p)
		return error_simple(id, "system", ENOMEM, "out of memory");
	p->id = (uint32_t)proc_id;
	p->main = is_main;
	snprintf(p->container, sizeof(p->container), "%s", c->id);
	p->oom_before = cgroup_oom_kills(c);
	TRACE("starting process %u", p->id);
	if (process_start(req, p, c, &e)) {
		free(p);
		return reply_error(id, &e);
	}
	p->next = procs;
	procs = p;
	if (is_main)
		c->main_pid = p->pid;
	struct buf b = {0};
	if (p->user[0])
		buf_printf(&b, "{\"pid\":%d,\"user\":%s}", p->pid, p->user);
	else
		buf_printf(&b, "{\"pid\":%d}", p->pid);
	ack(id, &b);
	TRACE("process %u started as %d", p->id, p->pid);
}

/* The container a request names, or an ERROR reply and NULL. */
static struct container *named_container(uint32_t id, const struct json *req)
{
	struct container *c = container_find(json_str(req, "container", ""));
	if (!c)
		error_simple(id, "notfound", ENOENT, "no such container");
	return c;
}

static void handle_container_request(uint16_t type, uint32_t id, const struct json *req)
{
	struct container *c = named_container(id, req);
	if (!c)
		return;
	struct err e = {0};
	struct buf b = {0};
	int rc = 0;
	switch (type) {
	case T_STATS:
		stats_json(c, &b);
		return ack(id, &b);
	case T_PS:
		ps_json(c, &b);
		return ack(id, &b);
	case T_UPDATE:
		rc = cgroup_update(c, req, &e);
		break;
	case T_FREEZE:
		rc = container_freeze(c, json_bool(req, "frozen", 1), &e);
		break;
	case T_FILES:
		rc = container_files(c, json_get(req, "files"), &e);
		break;
	case T_DESTROY:
		/* Answered once its processes are gone and its disks unmounted. */
		if (container_destroy(c, id, &e))
			reply_error(id, &e);
		return;
	}
	if (rc)
		reply_error(id, &e);
	else
		ack_empty(id);
}

static void handle_signal(uint32_t id, const struct json *req)
{
	struct proc *p = find_proc((uint32_t)json_int(req, "proc", 0));
	int sig = (int)json_int(req, "signal", 0);
	if (!p)
		return error_simple(id, "notfound", ESRCH, "no such process");
	if (sig <= 0 || sig >= NSIG)
		return error_simple(id, "invalid", EINVAL, "bad signal");
	if (!p->reaped && kill(json_bool(req, "all", 0) ? -p->pid : p->pid, sig) && errno != ESRCH)
		return error_simple(id, "system", errno, strerror(errno));
	ack_empty(id);
}

static void handle_resize(uint32_t id, const struct json *req)
{
	struct proc *p = find_proc((uint32_t)json_int(req, "proc", 0));
	if (!p)
		return error_simple(id, "notfound", ESRCH, "no such process");
	if (!p->tty || p->out_fd < 0)
		return ack_empty(id); /* dockerd ignores a resize without a tty */
	struct winsize ws = {.ws_row = (unsigned short)json_int(req, "height", 0),
			     .ws_col = (unsigned short)json_int(req, "width", 0)};
	if (ioctl(p->out_fd, TIOCSWINSZ, &ws))
		return error_simple(id, "system", errno, strerror(errno));
	ack_empty(id);
}

static void handle_state(uint32_t id)
{
	struct buf b = {0};
	buf_str(&b, "{\"processes\":[");
	for (struct proc *p = procs; p; p = p->next) {
		proc_state_json(&b, p);
		if (p->next)
			buf_str(&b, ",");
	}
	buf_str(&b, "]}");
	ack(id, &b);
}

static void handle_release(uint32_t id, const struct json *req)
{
	uint32_t proc_id = (uint32_t)json_int(req, "proc", 0);
	for (struct proc **pp = &procs; *pp; pp = &(*pp)->next) {
		struct proc *p = *pp;
		if (p->id != proc_id)
			continue;
		if (!p->exit_sent || (p->main && container_find(p->container)))
			return ack_empty(id); /* kept: still running, or a container's main */
		*pp = p->next;
		buf_free(&p->in_pending);
		retained_free(p);
		free(p);
		return ack_empty(id);
	}
	error_simple(id, "notfound", ESRCH, "no such process");
}

static void dispatch(uint16_t type, uint32_t id, const char *payload, uint32_t len)
{
	if (type == T_OUTPUT_ACK) {
		struct proc *p = find_proc(id);
		if (p)
			handle_output_ack(p, payload, len);
		return;
	}
	if (type == T_STDIN || type == T_STDIN_EOF) {
		struct proc *p = find_proc(id);
		if (!p)
			return;
		if (type == T_STDIN) {
			if (p->in_fd >= 0)
				buf_add(&p->in_pending, payload, len);
			else
				p->in_ack += len;
		} else {
			p->in_eof_requested = 1;
			if (p->in_off == p->in_pending.len && !p->tty)
				close_stdin(p);
		}
		return;
	}
	if (type >= 0x20)
		return; /* not a request: a newer host's stream type we do not know */
	struct json *req = json_parse(payload, len);
	if (!req || req->type != J_OBJ) {
		json_free(req);
		return error_simple(id, "invalid", EINVAL, "payload is not a JSON object");
	}
	struct err e = {0};
	switch (type) {
	case T_HELLO:
		handle_hello(id, req);
		break;
	case T_SANDBOX:
		if (sandbox_setup(req, &e))
			reply_error(id, &e);
		else
			ack_empty(id);
		break;
	case T_CREATE:
		TRACE("create begins");
		if (container_create(req, &e))
			reply_error(id, &e);
		else
			ack_empty(id);
		break;
	case T_NETWORK:
		if (network_config(req, &e))
			reply_error(id, &e);
		else
			ack_empty(id);
		break;
	case T_STATS:
	case T_PS:
	case T_UPDATE:
	case T_FREEZE:
	case T_FILES:
	case T_DESTROY:
		handle_container_request(type, id, req);
		break;
	case T_START:
		handle_start(id, req);
		break;
	case T_SIGNAL:
		handle_signal(id, req);
		break;
	case T_RESIZE:
		handle_resize(id, req);
		break;
	case T_STATE:
		handle_state(id);
		break;
	case T_RELEASE:
		handle_release(id, req);
		break;
	case T_POWEROFF:
		ack_empty(id);
		poweroff_requested = 1;
		break;
	case T_PING:
		ack_empty(id);
		break;
	default:
		error_simple(id, "invalid", ENOSYS, "unknown request type");
	}
	json_free(req);
}

static void parse_frames(void)
{
	size_t off = 0;
	while (inq.len - off >= FRAME_HEADER) {
		uint32_t len, id;
		uint16_t type;
		memcpy(&len, inq.data + off, 4);
		memcpy(&type, inq.data + off + 4, 2);
		memcpy(&id, inq.data + off + 8, 4);
		if (len > MAX_FRAME) {
			/* Lost framing (a host died mid-frame): drop what we have; the
			 * next host resynchronises with HELLO. */
			LOG("dropping %zu bytes of unframed input", inq.len - off);
			off = inq.len;
			break;
		}
		if (inq.len - off < FRAME_HEADER + len)
			break;
		dispatch(type, id, inq.data + off + FRAME_HEADER, len);
		off += FRAME_HEADER + len;
	}
	if (off) {
		memmove(inq.data, inq.data + off, inq.len - off);
		inq.len -= off;
	}
}

static void read_channel(void)
{
	char chunk[65536];
	for (;;) {
		ssize_t n = read(chan, chunk, sizeof(chunk));
		if (n > 0) {
			buf_add(&inq, chunk, (size_t)n);
			continue;
		}
		if (n == 0)
			host_lost(); /* what we had of an incoming frame is worthless now */
		break;
	}
	parse_frames();
}

/* -- boot and power-off ------------------------------------------------------ */

static int open_port(void)
{
	/* The port appears once the virtio-serial driver has heard of it from
	 * the host, which can be just after we start. */
	for (int attempt = 0; attempt < 5000; attempt++) {
		DIR *d = opendir("/sys/class/virtio-ports");
		struct dirent *e;
		while (d && (e = readdir(d))) {
			char path[300], name[64];
			snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", e->d_name);
			if (read_file(path, name, sizeof(name)) < 0)
				continue;
			name[strcspn(name, "\n")] = 0;
			if (strcmp(name, PORT_NAME))
				continue;
			snprintf(path, sizeof(path), "/dev/%s", e->d_name);
			closedir(d);
			int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
			if (fd >= 0)
				return fd;
			d = NULL;
			break;
		}
		if (d)
			closedir(d);
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	return -1;
}

static void power_off(void)
{
	TRACE("power off");
	flush_out();
	kill(-1, SIGKILL);
	while (waitpid(-1, NULL, __WALL) > 0)
		;
	sandbox_shutdown();
	/* With reboot=t and QEMU's -no-reboot, a reboot ends the QEMU process. */
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

static void early_mounts(void)
{
	mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mkdir_p(DISKS, 0755);
	/* Free page reporting gives the host back free guest memory in blocks
	 * of at least 2^order pages. The balloon driver asks for 2 MiB blocks,
	 * which leaves on the host several MiB that the boot touched and freed
	 * in smaller pieces; 64 KiB blocks return most of it (no file: an old
	 * kernel, or no balloon; nothing to do). */
	write_file("/sys/module/page_reporting/parameters/page_reporting_order", "4", 1, 0);
}

static int probe_connected(void)
{
	struct pollfd pfd = {.fd = chan, .events = POLLIN};
	if (poll(&pfd, 1, 0) < 0)
		return 0;
	return !(pfd.revents & POLLHUP);
}

/* While no host is connected the port polls as hung up, so it cannot wake
 * us; the virtio console driver sends SIGIO (to an O_ASYNC owner) when the
 * host side opens instead. A clone restored from a template is woken so the
 * moment hbd connects, not at the next poll timeout. Off while connected:
 * SIGIO would also come with every frame. */
static void watch_for_host(int on)
{
	int flags = fcntl(chan, F_GETFL);
	if (flags < 0)
		return;
	flags = on ? flags | O_ASYNC : flags & ~O_ASYNC;
	if (on)
		fcntl(chan, F_SETOWN, getpid());
	fcntl(chan, F_SETFL, flags);
}

int main(int argc, char **argv)
{
	/* The same binary is the container's /sbin/docker-init (--init). */
	const char *name = argc > 0 ? strrchr(argv[0], '/') : NULL;
	if (argc > 0 && !strcmp(name ? name + 1 : argv[0], "docker-init"))
		return docker_init_main(argc, argv);
	char uptime[64], cmdline[4096];
	early_mounts();
	if (read_file("/proc/cmdline", cmdline, sizeof(cmdline)) > 0) {
		trace_enabled = strstr(cmdline, "hbd.trace") != NULL;
		template_mode = strstr(cmdline, "hbd.template") != NULL;
	}
	TRACE("init started");
	if (read_file("/proc/uptime", uptime, sizeof(uptime)) > 0)
		boot_ms = (long long)(atof(uptime) * 1000);
	net_loopback_up();
	signal(SIGPIPE, SIG_IGN);
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGIO);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	/* While the host side of the port is still being announced: the root
	 * of the container the guest boots with, from its conventional disks.
	 * A template has none: its clones get theirs after they are restored. */
	if (!template_mode)
		containers_prepare_boot();
	chan = open_port();
	TRACE("port open");
	if (chan < 0) {
		LOG("no virtio-serial port named " PORT_NAME "; powering off");
		reboot(RB_AUTOBOOT);
	}
	connected = probe_connected();
	watch_for_host(!connected);
	struct pollfd fds[MAX_POLL];
	struct proc *owners[MAX_POLL];
	int kinds[MAX_POLL];
	enum { K_CHAN, K_SIG, K_OUT, K_ERR, K_IN };
	for (;;) {
		if (poweroff_requested)
			power_off();
		if (!connected && probe_connected()) {
			connected = 1;
			watch_for_host(0);
		}
		int n = 0;
		if (connected) {
			fds[n] = (struct pollfd){.fd = chan, .events = POLLIN | (outq_pending() ? POLLOUT : 0)};
			kinds[n++] = K_CHAN;
		}
		fds[n] = (struct pollfd){.fd = sigfd, .events = POLLIN};
		kinds[n++] = K_SIG;
		/* Retained output includes what is still queued of it. */
		size_t held = outq_pending() > retained_total ? outq_pending() : retained_total;
		int reading = held < OUTPUT_HIGH_WATER;
		for (struct proc *p = procs; p && n < MAX_POLL - 3; p = p->next) {
			if (reading && p->out_fd >= 0) {
				fds[n] = (struct pollfd){.fd = p->out_fd, .events = POLLIN};
				owners[n] = p;
				kinds[n++] = K_OUT;
			}
			if (reading && p->err_fd >= 0) {
				fds[n] = (struct pollfd){.fd = p->err_fd, .events = POLLIN};
				owners[n] = p;
				kinds[n++] = K_ERR;
			}
			if (p->in_fd >= 0 && p->in_off < p->in_pending.len) {
				fds[n] = (struct pollfd){.fd = p->in_fd, .events = POLLOUT};
				owners[n] = p;
				kinds[n++] = K_IN;
			}
		}
		/* Without a host, SIGIO tells us when one comes; look again every
		 * second all the same, in case a notification was missed. */
		int ready = poll(fds, (nfds_t)n, connected ? -1 : 1000);
		if (ready < 0 && errno != EINTR)
			LOG("poll: %s", strerror(errno));
		for (int i = 0; ready > 0 && i < n; i++) {
			short ev = fds[i].revents;
			if (!ev)
				continue;
			switch (kinds[i]) {
			case K_CHAN:
				if (ev & POLLIN)
					read_channel();
				else if (ev & POLLHUP)
					host_lost();
				if (ev & POLLOUT)
					flush_out();
				break;
			case K_SIG: {
				struct signalfd_siginfo si;
				while (read(sigfd, &si, sizeof(si)) == sizeof(si))
					;
				reap();
				containers_progress();
				break;
			}
			case K_OUT:
				read_output(owners[i], &owners[i]->out_fd, T_STDOUT, T_STDOUT_EOF);
				break;
			case K_ERR:
				read_output(owners[i], &owners[i]->err_fd, T_STDERR, T_STDERR_EOF);
				break;
			case K_IN:
				if (ev & (POLLERR | POLLHUP))
					close_stdin(owners[i]);
				else
					write_stdin(owners[i]);
				break;
			}
		}
		for (struct proc *p = procs; p; p = p->next) {
			if (p->in_fd >= 0 && p->in_off < p->in_pending.len)
				write_stdin(p);
			maybe_report_exit(p);
		}
		send_stdin_acks();
		flush_out();
	}
}
