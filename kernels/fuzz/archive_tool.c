/* The init's tar code (kernels/init/archive.c) as a command, for tests
 * on the host (tests/unit/test_init_archive.py):
 *   archive_tool extract ROOT DEST [keep-owners] [no-overwrite] [rename=NAME] < TAR
 *       unpack into DEST resolved inside ROOT as in "/" (docker cp's
 *       tar-extract has ROOT the container's root, COPY has ROOT = DEST)
 *   archive_tool create PATH > TAR      docker cp out (tar-create)
 *   archive_tool remove PATH            the extractor's removal of a tree
 * Exit status and messages are the builtins'. */
#include <stdarg.h>

#define logf_ tool_logf
#include "../init/archive.c"

void tool_logf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

void container_upper(const struct container *c, char *out, size_t cap) { snprintf(out, cap, "/"); }
void container_lower(const struct container *c, char *out, size_t cap) { snprintf(out, cap, "/"); }
void container_created_list(const struct container *c, char *out, size_t cap) { snprintf(out, cap, "/"); }
int resolve_owner(const char *spec, uid_t *uid, gid_t *gid, char *err, size_t errlen)
{
	return -1;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && !strcmp(argv[1], "extract")) {
		struct extract_options o = {0};
		for (int i = 4; i < argc; i++) {
			if (!strcmp(argv[i], "keep-owners"))
				o.keep_owners = 1;
			else if (!strcmp(argv[i], "no-overwrite"))
				o.no_overwrite_dir_nondir = 1;
			else if (!strncmp(argv[i], "rename=", 7))
				o.rename_single = argv[i] + 7;
		}
		return extract_in(argv[2], argv[3], &o);
	}
	if (argc == 3 && !strcmp(argv[1], "create"))
		return tar_create(1, argv[2]);
	if (argc == 3 && !strcmp(argv[1], "remove"))
		return remove_at(AT_FDCWD, argv[2]) ? 1 : 0;
	fprintf(stderr, "usage: archive_tool extract ROOT DEST [options] | create PATH | remove PATH\n");
	return 64;
}
