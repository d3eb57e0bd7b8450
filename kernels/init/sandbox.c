/* SETUP: the container's root filesystem and everything mounted under it,
 * the files hbd owns, the network, sysctls and the container cgroup.
 *
 * Everything is mounted in the init's own mount namespace under ROOTFS; the
 * main process's new mount namespace starts as a copy of it. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "init.h"
#include "util.h"

static int setup_done;

int sandbox_ready(void)
{
	return setup_done;
}

static int do_mount(const char *src, const char *target, const char *fstype,
		    unsigned long flags, const char *data, struct err *e)
{
	if (mount(src, target, fstype, flags, data)) {
		set_err(e, "system", errno, "mount %s on %s (%s): %s", src ? src : "none", target,
			fstype ? fstype : "bind", strerror(errno));
		return -1;
	}
	return 0;
}

static int mount_disk(const char *serial, const char *target, unsigned long flags,
		      struct err *e)
{
	char dev[64];
	if (find_disk(serial, dev, sizeof(dev))) {
		set_err(e, "system", ENODEV, "no disk with serial %s", serial);
		return -1;
	}
	if (mkdir_p(target, 0755)) {
		set_err(e, "system", errno, "mkdir %s: %s", target, strerror(errno));
		return -1;
	}
	return do_mount(dev, target, "ext4", flags, "", e);
}

/* A path inside the container root, with every component resolved inside
 * it: a symlink in the image must not send a mount outside the rootfs. */
static int rootfs_path(const char *target, char *out, size_t cap, struct err *e)
{
	char resolved[4096] = "";
	char work[4096];
	int hops = 0;
	snprintf(work, sizeof(work), "%s", target);
	char *rest = work;
	while (*rest) {
		while (*rest == '/')
			rest++;
		if (!*rest)
			break;
		char *slash = strchr(rest, '/');
		size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
		char comp[256];
		if (n >= sizeof(comp)) {
			set_err(e, "invalid", ENAMETOOLONG, "path too long: %s", target);
			return -1;
		}
		memcpy(comp, rest, n);
		comp[n] = 0;
		rest += n;
		if (!strcmp(comp, "."))
			continue;
		if (!strcmp(comp, "..")) {
			char *last = strrchr(resolved, '/');
			if (last)
				*last = 0;
			continue;
		}
		char candidate[4096], full[4200], link[4096];
		if (snprintf(candidate, sizeof(candidate), "%s/%s", resolved, comp) >=
		    (int)sizeof(candidate))
			goto too_long;
		snprintf(full, sizeof(full), ROOTFS "%s", candidate);
		ssize_t len = readlink(full, link, sizeof(link) - 1);
		if (len < 0) {
			snprintf(resolved, sizeof(resolved), "%s", candidate);
			continue;
		}
		if (++hops > 40) {
			set_err(e, "invalid", ELOOP, "too many symlinks in %s", target);
			return -1;
		}
		link[len] = 0;
		char next[4096];
		if (snprintf(next, sizeof(next), "%s/%s", link, rest) >= (int)sizeof(next))
			goto too_long;
		if (link[0] == '/')
			resolved[0] = 0;
		snprintf(work, sizeof(work), "%s", next);
		rest = work;
	}
	if (snprintf(out, cap, ROOTFS "%s", resolved) < (int)cap)
		return 0;
too_long:
	set_err(e, "invalid", ENAMETOOLONG, "path too long: %s", target);
	return -1;
}

static int ensure_target(const char *path, int is_file, struct err *e)
{
	char parent[4096];
	snprintf(parent, sizeof(parent), "%s", path);
	char *slash = strrchr(parent, '/');
	if (slash && slash != parent) {
		*slash = 0;
		if (mkdir_p(parent, 0755)) {
			set_err(e, "system", errno, "mkdir %s: %s", parent, strerror(errno));
			return -1;
		}
	}
	struct stat st;
	if (!lstat(path, &st))
		return 0;
	int rc = is_file ? (close(open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644)), 0)
			 : mkdir(path, 0755);
	if (rc && errno != EEXIST) {
		set_err(e, "system", errno, "create %s: %s", path, strerror(errno));
		return -1;
	}
	if (!rc && !strncmp(path, ROOTFS "/", strlen(ROOTFS) + 1))
		record_created(path);
	return 0;
}

static int setup_dev(long long shm_size, struct err *e)
{
	char path[256];
	if (ensure_target(ROOTFS "/dev", 0, e) ||
	    do_mount("tmpfs", ROOTFS "/dev", "tmpfs", MS_NOSUID | MS_STRICTATIME,
		     "mode=755,size=65536k", e))
		return -1;
	static const struct {
		const char *name;
		unsigned maj, min;
	} nodes[] = {{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7},
		     {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
	for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++) {
		snprintf(path, sizeof(path), ROOTFS "/dev/%s", nodes[i].name);
		if (mknod(path, S_IFCHR | 0666, makedev(nodes[i].maj, nodes[i].min)) ||
		    chmod(path, 0666)) {
			set_err(e, "system", errno, "mknod %s: %s", path, strerror(errno));
			return -1;
		}
	}
	static const char *links[][2] = {{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"},
					 {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"},
					 {"pts/ptmx", "ptmx"}, {"/proc/kcore", "core"}};
	for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
		snprintf(path, sizeof(path), ROOTFS "/dev/%s", links[i][1]);
		if (symlink(links[i][0], path)) {
			set_err(e, "system", errno, "symlink %s: %s", path, strerror(errno));
			return -1;
		}
	}
	char shm_opts[64];
	snprintf(shm_opts, sizeof(shm_opts), "mode=1777,size=%lld", shm_size);
	if (mkdir(ROOTFS "/dev/pts", 0755) || mkdir(ROOTFS "/dev/shm", 01777) ||
	    mkdir(ROOTFS "/dev/mqueue", 0755)) {
		set_err(e, "system", errno, "mkdir in /dev: %s", strerror(errno));
		return -1;
	}
	if (do_mount("devpts", ROOTFS "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
		     "newinstance,ptmxmode=0666,mode=0620,gid=5", e) ||
	    do_mount("shm", ROOTFS "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
		     shm_opts, e))
		return -1;
	return 0;
}

static int setup_files(const struct json *files, struct err *e)
{
	int i = 0;
	for (const struct json *f = files ? files->child : NULL; f; f = f->next, i++) {
		const char *target = json_str(f, "path", NULL);
		const char *data = json_str(f, "data", "");
		if (!target || target[0] != '/') {
			set_err(e, "invalid", EINVAL, "file without an absolute path");
			return -1;
		}
		size_t len;
		unsigned char *bytes = base64_decode(data, &len);
		if (!bytes) {
			set_err(e, "invalid", EINVAL, "file %s: bad base64", target);
			return -1;
		}
		char staged[128], inside[4096];
		snprintf(staged, sizeof(staged), ROOT "/files/%d", i);
		int rc = write_file(staged, bytes, len, (mode_t)json_int(f, "mode", 0644));
		free(bytes);
		if (rc) {
			set_err(e, "system", errno, "write %s: %s", staged, strerror(errno));
			return -1;
		}
		if (rootfs_path(target, inside, sizeof(inside), e) || ensure_target(inside, 1, e))
			return -1;
		struct stat st;
		if (lstat(inside, &st))
			continue; /* under a read-only mount that lacks it: as runc, go without */
		if (do_mount(staged, inside, NULL, MS_BIND, NULL, e))
			return -1;
	}
	return 0;
}

static int setup_mounts(const struct json *mounts, struct err *e)
{
	for (const struct json *m = mounts ? mounts->child : NULL; m; m = m->next) {
		const char *type = json_str(m, "type", "");
		const char *target = json_str(m, "target", "");
		const char *source = json_str(m, "source", "");
		unsigned long ro = json_bool(m, "readonly", 0) ? MS_RDONLY : 0;
		char inside[4096];
		if (target[0] != '/') {
			set_err(e, "invalid", EINVAL, "mount target must be absolute: %s", target);
			return -1;
		}
		if (rootfs_path(target, inside, sizeof(inside), e) || ensure_target(inside, 0, e))
			return -1;
		if (!strcmp(type, "disk") && json_bool(m, "copy_up", 0)) {
			/* Mounted aside first, filled from what it will cover, then moved
			 * over it. */
			char staging[256];
			snprintf(staging, sizeof(staging), ROOT "/staging/%s", source);
			if (strchr(source, '/')) {
				set_err(e, "invalid", EINVAL, "bad disk serial %s", source);
				return -1;
			}
			if (mount_disk(source, staging, 0, e) || copy_up(inside, staging, e) ||
			    do_mount(staging, inside, NULL, MS_MOVE, NULL, e))
				return -1;
			if (ro && do_mount(NULL, inside, NULL, MS_REMOUNT | MS_RDONLY, NULL, e))
				return -1;
		} else if (!strcmp(type, "disk")) {
			if (mount_disk(source, inside, ro, e))
				return -1;
		} else if (!strcmp(type, "9p")) {
			const char *options = json_str(m, "options", "");
			if (!strncmp(options, "file=", 5)) {
				/* A single file: the host shares a directory holding just it. */
				char share[256], file[512];
				snprintf(share, sizeof(share), ROOT "/shares/%s", source);
				snprintf(file, sizeof(file), "%s/%s", share, options + 5);
				if (strchr(options + 5, '/')) {
					set_err(e, "invalid", EINVAL, "bad file bind %s", options);
					return -1;
				}
				if (mkdir_p(share, 0700)) {
					set_err(e, "system", errno, "mkdir %s: %s", share, strerror(errno));
					return -1;
				}
				if (do_mount(source, share, "9p", ro,
					     "trans=virtio,version=9p2000.L,msize=512000,access=client", e))
					return -1;
				rmdir(inside); /* ensure_target made a directory: a file goes here */
				if (ensure_target(inside, 1, e) ||
				    do_mount(file, inside, NULL, MS_BIND | (ro ? MS_RDONLY : 0), NULL, e))
					return -1;
				if (ro)
					mount(NULL, inside, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL);
			} else if (do_mount(source, inside, "9p", ro,
					    "trans=virtio,version=9p2000.L,msize=512000,access=client", e)) {
				return -1;
			}
		} else if (!strcmp(type, "tmpfs")) {
			const char *options = json_str(m, "options", "");
			if (do_mount("tmpfs", inside, "tmpfs", ro | MS_NOSUID | MS_NODEV,
				     *options ? options : "mode=1777", e))
				return -1;
		} else {
			set_err(e, "invalid", EINVAL, "unknown mount type %s", type);
			return -1;
		}
	}
	return 0;
}

static int setup_sysctls(const struct json *sysctls, struct err *e)
{
	for (const struct json *s = sysctls ? sysctls->child : NULL; s; s = s->next) {
		if (s->type != J_STR || !s->key || strstr(s->key, ".."))
			continue;
		char path[512] = "/proc/sys/";
		size_t n = strlen(path);
		for (const char *k = s->key; *k && n < sizeof(path) - 1; k++)
			path[n++] = *k == '.' ? '/' : *k;
		path[n] = 0;
		if (write_file(path, s->str, strlen(s->str), 0644)) {
			set_err(e, "invalid", errno, "sysctl %s: %s", s->key, strerror(errno));
			return -1;
		}
	}
	return 0;
}

long long cgroup_oom_kills(void)
{
	char text[1024];
	if (read_file(CGROUP "/memory.events", text, sizeof(text)) < 0)
		return 0;
	char *p = strstr(text, "oom_kill ");
	return p ? atoll(p + 9) : 0;
}

static int setup_cgroup(const struct json *spec, struct err *e)
{
	static const char controllers[] = "+memory +cpu +pids";
	if (write_file("/sys/fs/cgroup/cgroup.subtree_control", controllers,
		       sizeof(controllers) - 1, 0644))
		LOG("cannot enable cgroup controllers: %s", strerror(errno));
	if (mkdir(CGROUP, 0755) && errno != EEXIST) {
		set_err(e, "system", errno, "mkdir " CGROUP ": %s", strerror(errno));
		return -1;
	}
	return cgroup_update(spec, e);
}

/* The container's root: image disk (read-only) under the scratch disk's
 * upper directory, with /sys. Done before SETUP arrives when the disks carry
 * the conventional serials, so that it overlaps the wait for the host. */
static char prepared_image[64], prepared_scratch[64];

int sandbox_prepare_rootfs(const char *image, const char *scratch, struct err *e)
{
	if (prepared_image[0])
		return strcmp(prepared_image, image) || strcmp(prepared_scratch, scratch) ? -1 : 0;
	if (mount_disk(image, ROOT "/image", MS_RDONLY, e))
		return -1;
	TRACE("image disk mounted");
	if (mount_disk(scratch, ROOT "/scratch", MS_NOATIME, e)) {
		umount2(ROOT "/image", 0);
		return -1;
	}
	TRACE("scratch disk mounted");
	if (mkdir_p(ROOT "/scratch/upper", 0755) || mkdir_p(ROOT "/scratch/work", 0755) ||
	    mkdir_p(ROOTFS, 0755)) {
		set_err(e, "system", errno, "scratch layout: %s", strerror(errno));
		return -1;
	}
	if (do_mount("overlay", ROOTFS, "overlay", 0,
		     "lowerdir=" ROOT "/image,upperdir=" ROOT "/scratch/upper,workdir=" ROOT
		     "/scratch/work,xino=off",
		     e))
		return -1;
	if (ensure_target(ROOTFS "/proc", 0, e) || ensure_target(ROOTFS "/sys", 0, e) ||
	    do_mount("sysfs", ROOTFS "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
		     NULL, e))
		return -1;
	snprintf(prepared_image, sizeof(prepared_image), "%s", image);
	snprintf(prepared_scratch, sizeof(prepared_scratch), "%s", scratch);
	TRACE("overlay and /sys mounted");
	return 0;
}

int sandbox_setup(const struct json *spec, struct err *e)
{
	if (setup_done) {
		set_err(e, "state", EBUSY, "the sandbox is already set up");
		return -1;
	}
	const struct json *rootfs = json_get(spec, "rootfs");
	const char *image = json_str(rootfs, "image", "image");
	const char *scratch = json_str(rootfs, "scratch", "scratch");
	if (sandbox_prepare_rootfs(image, scratch, e)) {
		if (!e->kind)
			set_err(e, "state", EBUSY, "root prepared from other disks than %s/%s", image,
				scratch);
		return -1;
	}
	long long shm = json_int(spec, "shm_size", 64LL * 1024 * 1024);
	if (setup_dev(shm > 0 ? shm : 64LL * 1024 * 1024, e))
		return -1;
	TRACE("/dev ready");
	/* Mounts first: hbd's files (hosts, resolv.conf) then land on top of a
	 * volume or bind at /etc, as runc orders them. */
	if (setup_mounts(json_get(spec, "mounts"), e) || setup_files(json_get(spec, "files"), e))
		return -1;
	TRACE("files and mounts ready");
	if (net_configure(spec, e))
		return -1;
	TRACE("network configured");
	if (setup_sysctls(json_get(spec, "sysctls"), e) ||
	    setup_cgroup(spec, e))
		return -1;
	TRACE("cgroup ready");
	const char *hostname = json_str(spec, "hostname", "");
	if (*hostname)
		sethostname(hostname, strlen(hostname));
	const char *domain = json_str(spec, "domainname", "");
	if (*domain)
		setdomainname(domain, strlen(domain));
	if (json_bool(rootfs, "readonly", 0) &&
	    do_mount(NULL, ROOTFS, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL, e))
		return -1;
	setup_done = 1;
	return 0;
}

void sandbox_shutdown(void)
{
	/* Detach the whole container tree, then the disks, so their filesystems
	 * are cleanly unmounted (not just synced) before power-off. */
	sync();
	umount2(ROOTFS, MNT_DETACH);
	umount2(ROOT "/scratch", 0);
	umount2(ROOT "/image", 0);
	sync();
}
