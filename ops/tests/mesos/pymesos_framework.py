"""A pymesos framework, as Mesos users write them, for ops/tests/mesos.rs.

It subscribes to the master named by argv[1] (HOST:PORT of the master's
HTTP listener), launches one shell task per phase on the first offer big
enough, and prints one line per thing the test checks:

    REGISTERED <framework id>      the first SUBSCRIBED
    REREGISTERED                   SUBSCRIBED again after a master failover
    DISCONNECTED                   the event stream ended
    UPDATE <task id> <state> <has uuid>
    DONE                           the second task finished

The test reads stdout; "NEXT" on stdin starts the second phase once the
test has failed the master over and the framework has reregistered.
Everything else pymesos logs goes to stderr.
"""

import logging
import sys
import threading
import uuid

from pymesos import MesosSchedulerDriver, Scheduler

logging.basicConfig(stream=sys.stderr, level=logging.INFO)


def say(*words):
    print(" ".join(str(w) for w in words), flush=True)


def scalar(offer, name):
    for r in offer.get("resources", []):
        if r["name"] == name and r["type"] == "SCALAR":
            return r["scalar"]["value"]
    return 0.0


class Test(Scheduler):
    def __init__(self):
        self.lock = threading.Lock()
        self.phase = 1
        self.launched = set()

    def registered(self, driver, framework_id, master_info):
        say("REGISTERED", framework_id["value"])

    def reregistered(self, driver, master_info):
        say("REREGISTERED")

    def disconnected(self, driver):
        say("DISCONNECTED")

    def next_phase(self, driver):
        with self.lock:
            self.phase = 2
        driver.reviveOffers()

    def resourceOffers(self, driver, offers):
        for offer in offers:
            with self.lock:
                task_id = "t%d" % self.phase
                launch = (
                    task_id not in self.launched
                    and scalar(offer, "cpus") >= 0.1
                    and scalar(offer, "mem") >= 32
                )
                if launch:
                    self.launched.add(task_id)
            if not launch:
                driver.declineOffer(offer["id"], filters={"refuse_seconds": 0.5})
                continue
            task = {
                "task_id": {"value": task_id},
                "agent_id": offer["agent_id"],
                "name": "pymesos " + task_id,
                "resources": [
                    {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
                    {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}},
                ],
                "command": {"value": "echo hello from " + task_id + "; sleep 1", "shell": True},
            }
            driver.launchTasks(offer["id"], [task])

    def statusUpdate(self, driver, status):
        say("UPDATE", status["task_id"]["value"], status["state"], "uuid" in status)
        if status["task_id"]["value"] == "t2" and status["state"] == "TASK_FINISHED":
            say("DONE")


def main():
    master = sys.argv[1]
    framework = {
        "user": "",
        "name": "pymesos-compat-" + uuid.uuid4().hex[:6],
        "hostname": "localhost",
        "failover_timeout": 300,
        "checkpoint": True,
    }
    sched = Test()
    driver = MesosSchedulerDriver(sched, framework, master, use_addict=True)
    driver.start()
    for line in sys.stdin:
        if line.strip() == "NEXT":
            sched.next_phase(driver)
        elif line.strip() == "STOP":
            break
    driver.stop(failover=True)
    driver.join()


if __name__ == "__main__":
    main()
