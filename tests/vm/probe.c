/* What busybox cannot show inside a test guest: directory entry types and
 * extended attributes, as the guest kernel reports them.
 *
 *   probe dirents DIR          one line per entry: "<d_type> <name>", . and .. left out;
 *                              "errno <n>" if listing fails (busybox's ls hides that)
 *   probe xattr PATH NAME      the attribute's value, or "errno <n>"
 *   probe xattrs PATH          the attribute names, one per line, or "errno <n>"
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/xattr.h>

int main(int argc, char **argv) {
    char buf[4096];
    if (argc == 3 && strcmp(argv[1], "dirents") == 0) {
        DIR *dir = opendir(argv[2]);
        if (dir == NULL) {
            printf("errno %d\n", errno);
            return 1;
        }
        struct dirent *entry;
        for (;;) {
            errno = 0; /* readdir gives NULL both at the end and on an error */
            entry = readdir(dir);
            if (entry == NULL)
                break;
            if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
                continue;
            printf("%d %s\n", entry->d_type, entry->d_name);
        }
        int error = errno;
        closedir(dir);
        if (error != 0) {
            printf("errno %d\n", error);
            return 1;
        }
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "xattr") == 0) {
        ssize_t n = lgetxattr(argv[2], argv[3], buf, sizeof buf);
        if (n < 0)
            printf("errno %d\n", errno);
        else
            printf("%.*s\n", (int)n, buf);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "xattrs") == 0) {
        ssize_t n = llistxattr(argv[2], buf, sizeof buf);
        if (n < 0) {
            printf("errno %d\n", errno);
            return 0;
        }
        for (ssize_t at = 0; at < n; at += (ssize_t)strlen(buf + at) + 1)
            printf("%s\n", buf + at);
        return 0;
    }
    fprintf(stderr, "usage: probe dirents DIR | xattr PATH NAME | xattrs PATH\n");
    return 2;
}
