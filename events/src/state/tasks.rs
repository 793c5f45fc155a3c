//! The task table: every task by key, with ordered iteration and O(1)
//! lookups.
//!
//! Status updates are the hottest path of `apply` (most of the log), and a
//! B-tree lookup by two strings cost about 40% of it in profiles. So the
//! table keeps two structures: a hash map for point lookups and an ordered
//! key set for every iteration. The hash map is never iterated, so its
//! order — the only thing a hasher could make nondeterministic — is never
//! visible; the hasher is fixed anyway (`DefaultHasher::new()`).

#![allow(clippy::disallowed_types)] // HashMap for lookups only; see above.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::ids::{FrameworkId, TaskId, TaskKey, TaskKeyRef};
use crate::state::Task;

type FixedState = BuildHasherDefault<DefaultHasher>;

#[derive(Clone, Debug, Default)]
pub struct TaskTable {
    order: BTreeSet<TaskKey>,
    by_key: HashMap<TaskKey, Task, FixedState>,
}

impl PartialEq for TaskTable {
    fn eq(&self, other: &Self) -> bool {
        self.by_key == other.by_key
    }
}

impl Hash for dyn TaskKeyRef + '_ {
    // Must equal TaskKey's derived Hash: the framework's str, then the task's.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.framework().hash(state);
        self.task().hash(state);
    }
}

impl TaskTable {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn get(&self, key: &TaskKey) -> Option<&Task> {
        self.by_key.get(key)
    }

    /// Looks up without building a `TaskKey` (no allocation).
    pub fn get_by(&self, framework_id: &str, task_id: &str) -> Option<&Task> {
        self.by_key.get(&(framework_id, task_id) as &dyn TaskKeyRef)
    }

    pub fn get_mut_by(&mut self, framework_id: &str, task_id: &str) -> Option<&mut Task> {
        self.by_key
            .get_mut(&(framework_id, task_id) as &dyn TaskKeyRef)
    }

    pub fn get_mut(&mut self, key: &TaskKey) -> Option<&mut Task> {
        self.by_key.get_mut(key)
    }

    pub fn contains_key(&self, key: &TaskKey) -> bool {
        self.by_key.contains_key(key)
    }

    pub fn insert(&mut self, key: TaskKey, task: Task) -> Option<Task> {
        self.order.insert(key.clone());
        self.by_key.insert(key, task)
    }

    /// Every task in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&TaskKey, &Task)> + '_ {
        self.order.iter().map(|k| (k, &self.by_key[k]))
    }

    pub fn values(&self) -> impl Iterator<Item = &Task> + '_ {
        self.iter().map(|(_, t)| t)
    }

    pub fn keys(&self) -> impl Iterator<Item = &TaskKey> + '_ {
        self.order.iter()
    }

    /// The tasks of one framework, in task-id order.
    pub fn of_framework<'a>(
        &'a self,
        framework_id: &'a FrameworkId,
    ) -> impl Iterator<Item = &'a Task> + 'a {
        self.order
            .range(TaskKey::new(framework_id.clone(), TaskId::default())..)
            .take_while(move |k| k.framework_id == *framework_id)
            .map(|k| &self.by_key[k])
    }

    /// The tasks of one framework whose id starts with `prefix`, in task-id
    /// order (a range of the ordered keys, not a scan).
    pub fn of_framework_with_prefix<'a>(
        &'a self,
        framework_id: &'a FrameworkId,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a Task> + 'a {
        self.order
            .range(TaskKey::new(framework_id.clone(), TaskId::new(prefix.to_owned()))..)
            .take_while(move |k| k.framework_id == *framework_id && k.task_id.0.starts_with(prefix))
            .map(|k| &self.by_key[k])
    }
}

impl std::ops::Index<&TaskKey> for TaskTable {
    type Output = Task;

    fn index(&self, key: &TaskKey) -> &Task {
        &self.by_key[key]
    }
}

impl<'a> IntoIterator for &'a TaskTable {
    type Item = (&'a TaskKey, &'a Task);
    type IntoIter = Box<dyn Iterator<Item = (&'a TaskKey, &'a Task)> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_lookups_find_what_owned_keys_find() {
        let mut t = TaskTable::default();
        for (f, k) in [("F1", "a"), ("F1", "b"), ("F2", "a"), ("F10", "a")] {
            let key = TaskKey::new(f, k);
            t.order.insert(key.clone());
            t.by_key.insert(key, dummy(f, k));
        }
        for (f, k) in [("F1", "a"), ("F1", "b"), ("F2", "a"), ("F10", "a")] {
            assert_eq!(t.get_by(f, k).unwrap().key, TaskKey::new(f, k));
        }
        assert!(t.get_by("F1", "c").is_none());
        let keys: Vec<String> = t.keys().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["F1/a", "F1/b", "F10/a", "F2/a"]);
        let f1_id = FrameworkId::from("F1");
        let f1: Vec<&str> = t
            .of_framework(&f1_id)
            .map(|t| t.key.task_id.as_str())
            .collect();
        assert_eq!(f1, ["a", "b"]);
    }

    #[test]
    fn a_prefix_range_finds_exactly_the_tasks_it_names() {
        let mut t = TaskTable::default();
        for (f, k) in [
            ("F1", "w.p.web.1.1"),
            ("F1", "w.p.web.1.2"),
            ("F1", "w.p.web.10.1"),
            ("F1", "w.p.web.2.1"),
            ("F2", "w.p.web.1.3"),
        ] {
            let key = TaskKey::new(f, k);
            t.order.insert(key.clone());
            t.by_key.insert(key, dummy(f, k));
        }
        let f1 = FrameworkId::from("F1");
        let found: Vec<&str> = t
            .of_framework_with_prefix(&f1, "w.p.web.1.")
            .map(|t| t.key.task_id.as_str())
            .collect();
        assert_eq!(found, ["w.p.web.1.1", "w.p.web.1.2"]);
    }

    fn dummy(f: &str, k: &str) -> Task {
        Task {
            key: TaskKey::new(f, k),
            agent_id: "S1".into(),
            name: String::new(),
            resources: Default::default(),
            command: Default::default(),
            job: None,
            instance: 0,
            job_version: 0,
            state: crate::state::TaskState::TaskStaging,
            status_uuid: String::new(),
            acknowledged: true,
            reason: Default::default(),
            message: String::new(),
            exit_code: None,
            healthy: None,
            kill_requested: false,
            launched_at_ms: 0,
            updated_at_ms: 0,
            update_count: 0,
            was_terminal: false,
        }
    }
}
