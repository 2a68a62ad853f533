"""Programs that make real SysV IPC waits, for doctor's tests (run with
``python -c SCRIPT MODE ARGS``; each prints its ids, then blocks).

Modes:
  make-sems N          create a private set of N semaphores at 1; print its id; sleep
  take SEMID A B       take semaphore A (sem_op -1, no SEM_UNDO); print "took"; read a
                       line from stdin; then take B (blocks while B is taken)
  take-exit SEMID A    take A and exit (no SEM_UNDO: the semaphore stays taken)
  make-queues N        create N private message queues; print their ids; sleep
  send-recv Q1 Q2      send one message to Q1, print "sent"; read a line from stdin;
                       receive twice from Q2 (the second blocks)
"""

SCRIPT = r'''
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
IPC_PRIVATE, IPC_CREAT = 0, 0o1000

class Sembuf(ctypes.Structure):
    _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flg", ctypes.c_short)]

def check(rc):
    if rc < 0:
        raise OSError(ctypes.get_errno(), "sysv call failed")
    return rc

def take(semid, num):
    op = Sembuf(num, -1, 0)
    check(libc.semop(semid, ctypes.byref(op), 1))

class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("text", ctypes.c_char * 16)]

mode, args = sys.argv[1], [int(a) for a in sys.argv[2:]]
if mode == "make-sems":
    semid = check(libc.semget(IPC_PRIVATE, args[0], IPC_CREAT | 0o600))
    for n in range(args[0]):
        check(libc.semctl(semid, n, 16, 1))  # SETVAL 1
    print(semid, flush=True)
    time.sleep(3600)
elif mode == "take":
    take(args[0], args[1])
    print("took", flush=True)
    sys.stdin.readline()
    take(args[0], args[2])
elif mode == "take-exit":
    take(args[0], args[1])
elif mode == "make-queues":
    print(*[check(libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600)) for _ in range(args[0])],
          flush=True)
    time.sleep(3600)
elif mode == "send-recv":
    m = Msg(1, b"hello")
    check(libc.msgsnd(args[0], ctypes.byref(m), 16, 0))
    print("sent", flush=True)
    sys.stdin.readline()
    for _ in range(2):
        check(libc.msgrcv(args[1], ctypes.byref(m), 16, 0, 0))
'''
