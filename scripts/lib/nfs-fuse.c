/*
 * nfs-fuse SERVER EXPORT MOUNTPOINT: a read-only NFSv4 client (libnfs) mounted through FUSE, for
 * `scripts/bench`. This machine kind's kernel has no NFS client (no CONFIG_NFS_FS, no modules), so
 * the bench's NFS cases read the image from a real nfs-ganesha over a real veth link through this
 * userspace client instead. Each FUSE worker thread has its own NFS session (libnfs contexts are
 * not thread-safe), so parallel readers issue parallel READs the way the kernel client would.
 * The kernel's page cache sits above it as above any file system: `drop_caches` empties it.
 * Build: cc -O2 -D_FILE_OFFSET_BITS=64 $(pkg-config --cflags fuse3) nfs-fuse.c -o nfs-fuse
 *        $(pkg-config --libs libnfs fuse3)
 */
#define FUSE_USE_VERSION 31
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw-nfs4.h> /* NFS_V4 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *server, *export_path;

struct session {
    struct nfs_context *nfs;
    char path[8][256];
    struct nfsfh *fh[8];
};

static pthread_key_t key;

/* A FUSE worker thread that ends takes its NFS session with it. */
static void end_session(void *p)
{
    struct session *s = p;
    for (int i = 0; i < 8 && s->fh[i]; i++)
        nfs_close(s->nfs, s->fh[i]);
    nfs_umount(s->nfs);
    nfs_destroy_context(s->nfs);
    free(s);
}

static struct session *session(void)
{
    struct session *s = pthread_getspecific(key);
    if (s)
        return s;
    s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->nfs = nfs_init_context();
    if (!s->nfs) {
        free(s);
        return NULL;
    }
    nfs_set_version(s->nfs, NFS_V4);
    /* One NFSv4 client per session: sessions sharing an open owner invalidate each other's
     * stateids (NFS4ERR_OLD_STATEID). */
    static int sessions;
    char name[64];
    snprintf(name, sizeof name, "nfs-fuse-%d-%d", (int)getpid(), __sync_fetch_and_add(&sessions, 1));
    nfs4_set_client_name(s->nfs, name);
    nfs4_set_verifier(s->nfs, name);
    if (nfs_mount(s->nfs, server, export_path) != 0) {
        fprintf(stderr, "nfs-fuse: mounting %s:%s: %s\n", server, export_path,
                nfs_get_error(s->nfs));
        nfs_destroy_context(s->nfs);
        free(s);
        return NULL;
    }
    pthread_setspecific(key, s);
    return s;
}

static void *nf_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    /* Read ahead as far as the kernel lets a FUSE mount (the kernel NFS client reads ahead
     * several rsize-sized READs too): sequential readers then keep several READs in flight, each
     * on its own worker thread and NFS session. */
    conn->max_readahead = 8 << 20;
    cfg->kernel_cache = 1;
    return NULL;
}

static int nf_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    (void)fi;
    struct session *s = session();
    struct nfs_stat_64 n;
    if (!s)
        return -EIO;
    int r = nfs_stat64(s->nfs, path, &n);
    if (r < 0)
        return r;
    memset(st, 0, sizeof *st);
    st->st_mode = n.nfs_mode;
    st->st_nlink = n.nfs_nlink;
    st->st_size = n.nfs_size;
    st->st_blocks = n.nfs_blocks;
    st->st_blksize = 1 << 20;
    st->st_mtime = n.nfs_mtime;
    st->st_ino = n.nfs_ino;
    return 0;
}

static int nf_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)off, (void)fi, (void)flags;
    struct session *s = session();
    struct nfsdir *d;
    struct nfsdirent *e;
    if (!s)
        return -EIO;
    int r = nfs_opendir(s->nfs, path, &d);
    if (r < 0)
        return r;
    while ((e = nfs_readdir(s->nfs, d)))
        fill(buf, e->name, NULL, 0, 0);
    nfs_closedir(s->nfs, d);
    return 0;
}

static int nf_open(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    if ((fi->flags & O_ACCMODE) != O_RDONLY)
        return -EROFS;
    return 0;
}

static int nf_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)fi;
    struct session *s = session();
    int i, r;
    if (!s || strlen(path) >= sizeof s->path[0])
        return -EIO;
    for (i = 0; i < 8 && s->fh[i] && strcmp(s->path[i], path); i++)
        ;
    if (i == 8)
        return -EMFILE;
    if (!s->fh[i]) {
        r = nfs_open(s->nfs, path, O_RDONLY, &s->fh[i]);
        if (r < 0)
            return r;
        strcpy(s->path[i], path);
    }
    size_t done = 0, most = nfs_get_readmax(s->nfs);
    if (most == 0 || most > 1 << 20)
        most = 1 << 20;
    while (done < size) {
        size_t n = size - done < most ? size - done : most;
        r = nfs_pread(s->nfs, s->fh[i], off + done, n, buf + done);
        if (r < 0) {
            fprintf(stderr, "nfs-fuse: reading %s at %lld (%zu bytes): %s\n", path,
                    (long long)(off + done), n, nfs_get_error(s->nfs));
            return r;
        }
        if (r == 0)
            break;
        done += r;
    }
    return done;
}

static const struct fuse_operations ops = {
    .init = nf_init,
    .getattr = nf_getattr,
    .readdir = nf_readdir,
    .open = nf_open,
    .read = nf_read,
};

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: nfs-fuse SERVER EXPORT MOUNTPOINT\n");
        return 2;
    }
    server = argv[1];
    export_path = argv[2];
    pthread_key_create(&key, end_session);
    char *fargs[] = {argv[0], "-f", "-o", "ro,default_permissions,max_idle_threads=32", argv[3], NULL};
    return fuse_main(5, fargs, &ops, NULL);
}
