/* libFuzzer harness for the guest init's tar reader and writer
 * (kernels/init/archive.c): each input is a tar unpacked into a fresh
 * directory, then archived again (the docker cp out path) and that archive
 * unpacked into a second directory.
 *
 * Invariant: nothing is written outside the directory unpacked into. The
 * harness chroots into its work directory (the current directory, made by
 * run.sh on a tmpfs), which holds only r/ (unpacked into), r2/ and o/ (a
 * canary file): whatever an archive's symlinks, "..", absolute names or
 * hard links aim at, any write outside r/ lands in the work directory or
 * o/ and is seen, and none can reach the host's files. Device nodes cannot
 * be made (CAP_MKNOD is dropped): a fuzzer must never write to one.
 *
 * Run from the work directory with relative corpus paths: run.sh does. */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <linux/capability.h>

#include <stdio.h>
/* What archive.c reports goes nowhere (libFuzzer keeps stderr); its LOG
 * would write to /dev/console. */
static FILE *fuzz_quiet;
#undef stderr
#define stderr fuzz_quiet
#define logf_ fuzz_logf
#include "../init/archive.c"
#undef stderr

void fuzz_logf(const char *fmt, ...)
{
	(void)fmt;
}

/* archive.c's links into the rest of the init, unused here. */
void container_upper(const struct container *c, char *out, size_t cap) { snprintf(out, cap, "/u"); }
void container_lower(const struct container *c, char *out, size_t cap) { snprintf(out, cap, "/l"); }
void container_created_list(const struct container *c, char *out, size_t cap) { snprintf(out, cap, "/c"); }
int resolve_owner(const char *spec, uid_t *uid, gid_t *gid, char *err, size_t errlen)
{
	*uid = 1000;
	*gid = 1000;
	return 0;
}

static const char canary[] = "canary\n";

static void fail(const char *what)
{
	fprintf(stderr, "fuzz_archive: INVARIANT BROKEN: %s\n", what);
	__builtin_trap();
}

static void drop_cap(int cap)
{
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[2];
	if (syscall(SYS_capget, &hdr, data))
		return;
	for (int i = 0; i < 2; i++) {
		unsigned bit = i == cap / 32 ? 1u << (cap % 32) : 0;
		data[i].effective &= ~bit;
		data[i].permitted &= ~bit;
		data[i].inheritable &= ~bit;
	}
	prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
	syscall(SYS_capset, &hdr, data);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	fuzz_quiet = fopen("/dev/null", "w");
	/* Never without: an escaping write would land on the host's files. */
	if (chroot(".") || chdir("/")) {
		perror("fuzz_archive: chroot into the work directory (run it as root, from run.sh)");
		exit(1);
	}
	drop_cap(CAP_MKNOD);
	drop_cap(CAP_SYS_CHROOT);
	umask(022);
	mkdir("o", 0755);
	int fd = open("o/canary", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, canary, sizeof(canary) - 1) != (ssize_t)sizeof(canary) - 1)
		exit(1);
	close(fd);
	return 0;
}

/* Only these may be in the work directory (libFuzzer's own besides). */
static int allowed_top(const char *name)
{
	static const char *const ok[] = {".", "..", "r", "r2", "o", "corpus", "fuzz_archive"};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (!strcmp(name, ok[i]))
			return 1;
	return !strncmp(name, "crash-", 6) || !strncmp(name, "leak-", 5) ||
	       !strncmp(name, "timeout-", 8) || !strncmp(name, "oom-", 4) ||
	       !strncmp(name, "slow-unit-", 10) || !strncmp(name, "fuzz-", 5);
}

static void check_outside(void)
{
	DIR *d = opendir("/");
	struct dirent *e;
	while (d && (e = readdir(d)))
		if (!allowed_top(e->d_name)) {
			fprintf(stderr, "fuzz_archive: /%s appeared\n", e->d_name);
			fail("an entry outside the extraction directory");
		}
	if (d)
		closedir(d);
	d = opendir("/o");
	while (d && (e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strcmp(e->d_name, "canary"))
			fail("a new entry in the directory beside it");
	if (d)
		closedir(d);
	struct stat st;
	char text[64];
	if (lstat("/o/canary", &st) || !S_ISREG(st.st_mode) || st.st_nlink != 1 ||
	    (st.st_mode & 07777) != 0644 || st.st_uid != 0 ||
	    read_file("/o/canary", text, sizeof(text)) != (ssize_t)sizeof(canary) - 1 ||
	    strcmp(text, canary))
		fail("the canary outside was changed or linked to");
}

static void fresh(const char *dir)
{
	remove_at(AT_FDCWD, dir);
	if (mkdir(dir, 0755))
		fail("cannot make the extraction directory");
}

static int memfd_of(const uint8_t *data, size_t size)
{
	int fd = memfd_create("tar", MFD_CLOEXEC);
	if (fd < 0 || write_all(fd, data, size) || lseek(fd, 0, SEEK_SET))
		abort();
	return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The first byte picks the options; the rest is the tar. */
	if (size < 1)
		return 0;
	uint8_t flags = data[0];
	data++;
	size--;
	struct extract_options o = {
		.keep_owners = flags & 1,
		.no_overwrite_dir_nondir = (flags >> 1) & 1,
		.rename_single = (flags >> 2) & 1 ? "renamed" : NULL,
		.uid = 0,
		.gid = 0,
	};
	/* Unpacked at r itself, or at a directory inside it (docker cp to a
	 * path in the container: still contained by r). */
	const char *dest = (flags >> 3) & 1 ? "/d" : "/";
	fresh("/r");
	mkdir("/r/d", 0755);
	/* What a hostile container leaves on the way: symlinks out of its
	 * root, relative and absolute, and a loop (the archive's own symlinks
	 * that point above the extraction point are refused, as dockerd does). */
	if (symlink("../o", "/r/up") || symlink("/o", "/r/abs") || symlink("../../o", "/r/d/up") ||
	    symlink("loop", "/r/loop"))
		fail("cannot set up the container's symlinks");
	int in = memfd_of(data, size);
	int root = open("/r", O_PATH | O_DIRECTORY | O_CLOEXEC);
	tar_extract(in, root, dest, &o);
	close(in);
	check_outside();

	/* docker cp out of what was made, and that back in. */
	int out = memfd_create("out", MFD_CLOEXEC);
	if (out < 0)
		abort();
	tar_create(out, (flags >> 4) & 1 ? "/r/." : "/r");
	lseek(out, 0, SEEK_SET);
	fresh("/r2");
	int root2 = open("/r2", O_PATH | O_DIRECTORY | O_CLOEXEC);
	struct extract_options plain = {.keep_owners = 1};
	tar_extract(out, root2, "/", &plain);
	close(out);
	close(root2);
	close(root);
	check_outside();
	return 0;
}

/* LeakSanitizer needs /proc, which the chroot lacks; the builtins run in a
 * child process that exits when done. */
const char *__asan_default_options(void)
{
	return "detect_leaks=0";
}
