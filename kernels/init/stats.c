/* STATS, PS and UPDATE: a container as its guest sees it, from /proc, its
 * network namespace and its cgroup. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "init.h"
#include "util.h"

/* The number after `key` at the start of a line of `text`, or 0. */
static long long field(const char *text, const char *key)
{
	size_t n = strlen(key);
	const char *line = text;
	while (*line) {
		if (!strncmp(line, key, n))
			return atoll(line + n);
		const char *nl = strchr(line, '\n');
		if (!nl)
			break;
		line = nl + 1;
	}
	return 0;
}

long long cgroup_file(const struct container *c, const char *file, const char *key)
{
	char text[8192], path[256];
	snprintf(path, sizeof(path), "%s/%s", c->cgroup, file);
	if (read_file(path, text, sizeof(text)) < 0)
		return 0;
	if (!key)
		return strncmp(text, "max", 3) ? atoll(text) : 0;
	return field(text, key);
}

static void net_json(const struct container *c, struct buf *b)
{
	char text[8192];
	/* /proc/self/net is the reader's network namespace. */
	if (netns_enter(c->net))
		return;
	ssize_t n = read_file("/proc/self/net/dev", text, sizeof(text));
	netns_leave(0);
	if (n < 0)
		return;
	int first = 1;
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *colon = strchr(line, ':');
		if (!colon)
			continue;
		*colon = 0;
		while (*line == ' ')
			line++;
		if (!strcmp(line, "lo"))
			continue;
		unsigned long long v[16] = {0};
		if (sscanf(colon + 1, "%llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu",
			   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10],
			   &v[11], &v[12], &v[13], &v[14], &v[15]) < 16)
			continue;
		buf_str(b, first ? "" : ",");
		first = 0;
		buf_json_string(b, line);
		buf_printf(b,
			   ":{\"rx_bytes\":%llu,\"rx_packets\":%llu,\"rx_errors\":%llu,\"rx_dropped\":%llu,"
			   "\"tx_bytes\":%llu,\"tx_packets\":%llu,\"tx_errors\":%llu,\"tx_dropped\":%llu}",
			   v[0], v[1], v[2], v[3], v[8], v[9], v[10], v[11]);
	}
}

void stats_json(const struct container *c, struct buf *b)
{
	char mem[4096], stat[4096], memstat[8192], path[256];
	read_file("/proc/meminfo", mem, sizeof(mem));
	read_file("/proc/stat", stat, sizeof(stat));
	snprintf(path, sizeof(path), "%s/memory.stat", c->cgroup);
	if (read_file(path, memstat, sizeof(memstat)) < 0)
		memstat[0] = 0;
	unsigned long long v[8] = {0};
	sscanf(stat, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
	       &v[5], &v[6], &v[7]);
	unsigned long long ticks = 0;
	for (int i = 0; i < 8; i++)
		ticks += v[i];
	long hz = sysconf(_SC_CLK_TCK);
	unsigned long long ns_per_tick = 1000000000ULL / (unsigned long long)(hz > 0 ? hz : 100);
	long long total = field(mem, "MemTotal:") * 1024;
	long long limit = cgroup_file(c, "memory.max", NULL);
	buf_printf(b,
		   "{\"memory\":{\"total\":%lld,\"free\":%lld,\"available\":%lld,\"usage\":%lld,"
		   "\"limit\":%lld,\"cache\":%lld,\"anon\":%lld,\"file\":%lld,"
		   "\"inactive_file\":%lld,\"active_file\":%lld,\"max_usage\":%lld},",
		   total, field(mem, "MemFree:") * 1024, field(mem, "MemAvailable:") * 1024,
		   cgroup_file(c, "memory.current", NULL), limit && limit < total ? limit : total,
		   field(memstat, "file "), field(memstat, "anon "), field(memstat, "file "),
		   field(memstat, "inactive_file "), field(memstat, "active_file "),
		   cgroup_file(c, "memory.peak", NULL));
	buf_printf(b,
		   "\"cpu\":{\"usage_ns\":%lld,\"user_ns\":%lld,\"kernel_ns\":%lld,"
		   "\"system_ns\":%llu,\"online\":%ld,\"throttled_periods\":%lld,"
		   "\"periods\":%lld,\"throttled_ns\":%lld},",
		   cgroup_file(c, "cpu.stat", "usage_usec ") * 1000,
		   cgroup_file(c, "cpu.stat", "user_usec ") * 1000,
		   cgroup_file(c, "cpu.stat", "system_usec ") * 1000, ticks * ns_per_tick,
		   sysconf(_SC_NPROCESSORS_ONLN), cgroup_file(c, "cpu.stat", "nr_throttled "),
		   cgroup_file(c, "cpu.stat", "nr_periods "),
		   cgroup_file(c, "cpu.stat", "throttled_usec ") * 1000);
	buf_printf(b, "\"pids\":%lld,\"pids_limit\":%lld,\"networks\":{",
		   cgroup_file(c, "pids.current", NULL), cgroup_file(c, "pids.max", NULL));
	net_json(c, b);
	buf_str(b, "}}");
}

/* /etc/passwd of the container: uid -> name, as docker top shows users. */
static void user_name(const struct container *c, unsigned uid, char *out, size_t cap)
{
	snprintf(out, cap, "%u", uid);
	char passwd[256];
	snprintf(passwd, sizeof(passwd), "%s/etc/passwd", c->rootfs);
	FILE *f = fopen(passwd, "re");
	if (!f)
		return;
	char line[1024];
	while (fgets(line, sizeof(line), f)) {
		char *name = strtok(line, ":");
		strtok(NULL, ":");
		char *id = strtok(NULL, ":");
		if (name && id && (unsigned)strtoul(id, NULL, 10) == uid) {
			snprintf(out, cap, "%s", name);
			break;
		}
	}
	fclose(f);
}

/* The pid as the container sees it: the last NSpid entry. */
static long ns_pid(const char *status)
{
	const char *p = strstr(status, "NSpid:");
	if (!p)
		return -1;
	const char *end = strchr(p, '\n');
	long last = -1;
	for (p += 6; p < end;) {
		char *next;
		long v = strtol(p, &next, 10);
		if (next == p)
			break;
		last = v;
		p = next;
	}
	return last;
}

void ps_json(const struct container *c, struct buf *b)
{
	long hz = sysconf(_SC_CLK_TCK);
	buf_printf(b, "{\"hz\":%ld,\"processes\":[", hz > 0 ? hz : 100);
	char procs[65536], procs_path[256];
	int first = 1;
	snprintf(procs_path, sizeof(procs_path), "%s/cgroup.procs", c->cgroup);
	if (read_file(procs_path, procs, sizeof(procs)) > 0) {
		char *save = NULL;
		for (char *tok = strtok_r(procs, "\n", &save); tok; tok = strtok_r(NULL, "\n", &save)) {
			int pid = atoi(tok);
			char path[64], stat[2048], status[4096], cmd[4096], name[64], user[64];
			snprintf(path, sizeof(path), "/proc/%d/stat", pid);
			if (read_file(path, stat, sizeof(stat)) <= 0)
				continue;
			snprintf(path, sizeof(path), "/proc/%d/status", pid);
			if (read_file(path, status, sizeof(status)) <= 0)
				continue;
			/* comm may hold spaces and parentheses: parse after the last ')'. */
			char *rparen = strrchr(stat, ')'), *lparen = strchr(stat, '(');
			if (!rparen || !lparen)
				continue;
			snprintf(name, sizeof(name), "%.*s", (int)(rparen - lparen - 1), lparen + 1);
			int ppid = 0, tty = 0;
			unsigned long long utime = 0, stime = 0, start = 0;
			char state;
			sscanf(rparen + 2, "%c %d %*d %*d %d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d %llu",
			       &state, &ppid, &tty, &utime, &stime, &start);
			snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
			ssize_t n = read_file(path, cmd, sizeof(cmd));
			for (ssize_t i = 0; i < n - 1; i++)
				if (!cmd[i])
					cmd[i] = ' ';
			if (n <= 0)
				snprintf(cmd, sizeof(cmd), "[%s]", name);
			unsigned uid = (unsigned)field(status, "Uid:");
			user_name(c, uid, user, sizeof(user));
			char ppath[64], pstatus[4096];
			snprintf(ppath, sizeof(ppath), "/proc/%d/status", ppid);
			long container_ppid = read_file(ppath, pstatus, sizeof(pstatus)) > 0 ? ns_pid(pstatus) : 0;
			buf_str(b, first ? "" : ",");
			first = 0;
			long cpid = ns_pid(status);
			/* The container's pid 1 has its parent outside the container. */
			buf_printf(b, "{\"pid\":%ld,\"ppid\":%ld,\"user\":", cpid,
				   cpid > 1 && container_ppid > 0 ? container_ppid : 0);
			buf_json_string(b, user);
			buf_printf(b, ",\"tty\":%d,\"cpu_ticks\":%llu,\"start_ticks\":%llu,\"cmd\":", tty,
				   utime + stime, start);
			buf_json_string(b, cmd);
			buf_str(b, "}");
		}
	}
	char uptime[64];
	double up = 0;
	if (read_file("/proc/uptime", uptime, sizeof(uptime)) > 0)
		up = atof(uptime);
	buf_printf(b, "],\"uptime_ms\":%lld}", (long long)(up * 1000));
}

static int write_cgroup(const struct container *c, const char *file, const char *value,
			struct err *e)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", c->cgroup, file);
	if (write_file(path, value, strlen(value), 0644)) {
		set_err(e, "system", errno, "%s: %s", file, strerror(errno));
		return -1;
	}
	return 0;
}

/* --cpu-shares (as cpu.weight) and --memory-reservation (memory.low), as
 * runc sets them on cgroup v2. */
static int cgroup_update_shares(const struct container *c, const struct json *req,
				struct err *e)
{
	char value[64];
	long long weight = json_int(req, "cpu_weight", -1);
	if (weight >= 0) {
		snprintf(value, sizeof(value), "%lld", weight ? weight : 100);
		if (write_cgroup(c, "cpu.weight", value, e))
			return -1;
	}
	long long low = json_int(req, "memory_low", -1);
	if (low >= 0) {
		snprintf(value, sizeof(value), "%lld", low);
		if (write_cgroup(c, "memory.low", value, e))
			return -1;
	}
	return 0;
}

int cgroup_update(const struct container *c, const struct json *req, struct err *e)
{
	char value[64];
	long long memory = json_int(req, "memory_limit", -1);
	if (memory >= 0) {
		if (memory)
			snprintf(value, sizeof(value), "%lld", memory);
		else
			snprintf(value, sizeof(value), "max");
		if (write_cgroup(c, "memory.max", value, e))
			return -1;
	}
	long long quota = json_int(req, "cpu_quota", -1);
	long long period = json_int(req, "cpu_period", 100000);
	if (quota >= 0) {
		if (quota)
			snprintf(value, sizeof(value), "%lld %lld", quota, period > 0 ? period : 100000);
		else
			snprintf(value, sizeof(value), "max %lld", period > 0 ? period : 100000);
		if (write_cgroup(c, "cpu.max", value, e))
			return -1;
	}
	long long pids = json_int(req, "pids_limit", -1);
	if (pids >= 0) {
		if (pids)
			snprintf(value, sizeof(value), "%lld", pids);
		else
			snprintf(value, sizeof(value), "max");
		if (write_cgroup(c, "pids.max", value, e))
			return -1;
	}
	return cgroup_update_shares(c, req, e);
}
