/* Docker's security settings for a container's processes, applied as runc
 * applies them: capability sets (bounding, effective, permitted,
 * inheritable, ambient), a seccomp filter the host compiled, no_new_privs,
 * masked and read-only paths. Also what keeps a container away from the
 * init: its main process detaches every mount of the init's from its mount
 * namespace. Leaving its root by chroot leads back into it anyway (the root
 * is stacked on the initramfs's /, and ".." there steps into the top
 * mount), but a container with CAP_SYS_ADMIN may unmount its root and
 * re-enter its namespace: beneath it then lies only the bare initramfs,
 * not the init's /dev (the agent's port, the disks), /proc or disks. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "init.h"
#include "util.h"

/* The kernel ABI of capset and seccomp: musl ships no kernel headers. */
struct cap_header_ {
	uint32_t version;
	int pid;
};
struct cap_data_ {
	uint32_t effective, permitted, inheritable;
};
#define CAP_VERSION_3_ 0x20080522
#define CAP_LAST_CAP_ 40
struct sock_filter_ {
	uint16_t code;
	uint8_t jt, jf;
	uint32_t k;
};
struct sock_fprog_ {
	unsigned short len;
	struct sock_filter_ *filter;
};
#define SECCOMP_MODE_FILTER_ 2
#define BPF_MAXINSNS_ 4096

#define CAP_SETS 5
static const char *const set_names[CAP_SETS] = {"bounding", "effective", "permitted",
						 "inheritable", "ambient"};

/* The highest capability the guest kernel knows; caps above it are
 * ignored, as runc ignores those its host kernel lacks. */
static int last_cap(void)
{
	static int last = -1;
	if (last >= 0)
		return last;
	char text[16] = "";
	int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, text, sizeof(text) - 1);
		text[n > 0 ? n : 0] = 0;
		close(fd);
	}
	last = atoi(text) > 0 ? atoi(text) : CAP_LAST_CAP_;
	return last;
}

static int copy_caps(const struct json *sets, uint64_t out[CAP_SETS], struct err *e)
{
	for (int i = 0; i < CAP_SETS; i++) {
		out[i] = 0;
		const struct json *list = json_get(sets, set_names[i]);
		for (const struct json *v = list ? list->child : NULL; v; v = v->next) {
			if (v->type != J_NUM || v->num < 0 || v->num > 63) {
				set_err(e, "invalid", EINVAL, "capabilities.%s holds numbers 0-63",
					set_names[i]);
				return -1;
			}
			out[i] |= 1ULL << (int)v->num;
		}
	}
	return 0;
}

static int copy_paths(struct buf *out, const struct json *list, const char *field,
		      struct err *e)
{
	for (const struct json *v = list ? list->child : NULL; v; v = v->next) {
		if (v->type != J_STR || v->str[0] != '/' || strlen(v->str) > 255) {
			set_err(e, "invalid", EINVAL, "%s holds absolute paths", field);
			return -1;
		}
		buf_add(out, v->str, strlen(v->str) + 1);
	}
	return 0;
}

int security_copy(struct security *sec, const struct json *spec, struct err *e)
{
	const struct json *caps = json_get(spec, "capabilities");
	/* No capabilities field: an older host; the container keeps them all. */
	sec->has_caps = caps && caps->type == J_OBJ;
	if (sec->has_caps && copy_caps(caps, sec->caps, e))
		return -1;
	sec->no_new_privs = json_bool(spec, "no_new_privileges", 0);
	const char *filter = json_str(spec, "seccomp", "");
	if (*filter) {
		size_t len = 0;
		unsigned char *bytes = base64_decode(filter, &len);
		if (!bytes || !len || len % sizeof(struct sock_filter_) ||
		    len / sizeof(struct sock_filter_) > BPF_MAXINSNS_) {
			free(bytes);
			set_err(e, "invalid", EINVAL, "seccomp is a base64 array of sock_filter");
			return -1;
		}
		buf_add(&sec->seccomp, bytes, len);
		free(bytes);
	}
	return copy_paths(&sec->masked, json_get(spec, "masked_paths"), "masked_paths", e) ||
	       copy_paths(&sec->readonly, json_get(spec, "readonly_paths"), "readonly_paths", e);
}

void security_free(struct security *sec)
{
	buf_free(&sec->seccomp);
	buf_free(&sec->masked);
	buf_free(&sec->readonly);
}

/* runc's readonlyPath: a bind of itself, remounted read-only. */
static int readonly_path(const char *path)
{
	if (mount(path, path, NULL, MS_BIND | MS_REC, NULL))
		return errno == ENOENT ? 0 : -1;
	return mount(path, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV |
		     MS_NOEXEC, NULL);
}

/* runc's maskPath: /dev/null over a file, an empty read-only tmpfs over a
 * directory; what does not exist needs no mask. */
static int mask_path(const char *path)
{
	if (!mount("/dev/null", path, NULL, MS_BIND, NULL))
		return 0;
	if (errno == ENOTDIR)
		return mount("tmpfs", path, "tmpfs", MS_RDONLY, NULL);
	return errno == ENOENT ? 0 : -1;
}

int security_paths(const struct security *sec, char *err, size_t errlen)
{
	for (size_t off = 0; off < sec->readonly.len; off += strlen(sec->readonly.data + off) + 1)
		if (readonly_path(sec->readonly.data + off)) {
			snprintf(err, errlen, "readonly path %s: %s", sec->readonly.data + off,
				 strerror(errno));
			return -1;
		}
	for (size_t off = 0; off < sec->masked.len; off += strlen(sec->masked.data + off) + 1)
		if (mask_path(sec->masked.data + off)) {
			snprintf(err, errlen, "mask path %s: %s", sec->masked.data + off,
				 strerror(errno));
			return -1;
		}
	return 0;
}

/* Detach every mount of the init's that is not the container's root: the
 * caller has moved that root over "/" and not yet chrooted, so absolute
 * paths still resolve in the init's tree beneath it. */
int security_detach_init_mounts(char *err, size_t errlen)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f) {
		snprintf(err, errlen, "open mountinfo: %s", strerror(errno));
		return -1;
	}
	/* The namespace's root mount is the one whose parent is not listed:
	 * mountinfo lists parents first, so it is the first line. */
	char line[1024], targets[64][256];
	int root_id = -1, ntargets = 0;
	while (fgets(line, sizeof(line), f) && ntargets < 64) {
		int id, parent;
		char target[256];
		if (sscanf(line, "%d %d %*s %*s %255s", &id, &parent, target) != 3)
			continue;
		if (root_id < 0) {
			root_id = id;
			continue;
		}
		/* "/" on the root is the container's root moved there. */
		if (parent == root_id && strcmp(target, "/"))
			snprintf(targets[ntargets++], sizeof(targets[0]), "%s", target);
	}
	fclose(f);
	for (int i = 0; i < ntargets; i++)
		if (umount2(targets[i], MNT_DETACH) && errno != EINVAL && errno != ENOENT) {
			snprintf(err, errlen, "detach %s: %s", targets[i], strerror(errno));
			return -1;
		}
	return 0;
}

static int install_seccomp(const struct security *sec)
{
	if (!sec->seccomp.len)
		return 0;
	struct sock_fprog_ prog = {
		.len = (unsigned short)(sec->seccomp.len / sizeof(struct sock_filter_)),
		.filter = (struct sock_filter_ *)sec->seccomp.data,
	};
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER_, &prog, 0, 0);
}

int security_before_user(const struct security *sec, int privileged, char *err, size_t errlen)
{
	/* Without no_new_privs a filter needs CAP_SYS_ADMIN, which the sets may
	 * drop: runc installs it first then, and as late as it can with it. */
	if (!sec->no_new_privs && install_seccomp(sec)) {
		snprintf(err, errlen, "install seccomp filter: %s", strerror(errno));
		return -1;
	}
	if (!sec->has_caps && !privileged)
		return 0;
	uint64_t bounding = privileged ? ~0ULL : sec->caps[0];
	for (int cap = 0; cap <= last_cap(); cap++)
		if (!(bounding & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)) {
			snprintf(err, errlen, "drop bounding capability %d: %s", cap, strerror(errno));
			return -1;
		}
	/* Keep the permitted set through setuid; capset picks from it after. */
	if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)) {
		snprintf(err, errlen, "keep capabilities: %s", strerror(errno));
		return -1;
	}
	return 0;
}

int security_after_user(const struct security *sec, int privileged, char *err, size_t errlen)
{
	if (sec->has_caps || privileged) {
		uint64_t known = last_cap() >= 63 ? ~0ULL : (1ULL << (last_cap() + 1)) - 1;
		uint64_t eff = (privileged ? ~0ULL : sec->caps[1]) & known;
		uint64_t prm = (privileged ? ~0ULL : sec->caps[2]) & known;
		uint64_t inh = sec->caps[3] & known, amb = sec->caps[4] & known;
		struct cap_header_ head = {.version = CAP_VERSION_3_};
		struct cap_data_ data[2] = {
			{(uint32_t)eff, (uint32_t)prm, (uint32_t)inh},
			{(uint32_t)(eff >> 32), (uint32_t)(prm >> 32), (uint32_t)(inh >> 32)}};
		if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) || syscall(SYS_capset, &head, data)) {
			snprintf(err, errlen, "unable to apply caps: %s", errno_text(errno));
			return -1;
		}
		prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
		for (int cap = 0; cap <= last_cap(); cap++)
			if ((amb & (1ULL << cap)) &&
			    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0)) {
				snprintf(err, errlen, "raise ambient capability %d: %s", cap,
					 strerror(errno));
				return -1;
			}
	}
	if (sec->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) {
		snprintf(err, errlen, "set no_new_privs: %s", strerror(errno));
		return -1;
	}
	if (sec->no_new_privs && install_seccomp(sec)) {
		snprintf(err, errlen, "install seccomp filter: %s", strerror(errno));
		return -1;
	}
	return 0;
}
