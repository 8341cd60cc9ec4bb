//! The cost-model phase of `virtuos-bench nginx`: system calls per request of nginx and of each
//! server process, counted with the project's own eBPF telemetry, beside their CPU time per
//! request, natively and in every redirected mode (the shared implementation is
//! [`crate::cost`]; this is what is nginx's: the cells, the stack, the table).
//!
//! Per mode one more fresh stack: nginx's master and workers in one cgroup, each server in its
//! own, the files checked byte for byte, a warm-up, then one wrk run per measured size ×
//! keep-alive cell between two `virtuos-redirect top --once --json` readings.

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::Serialize;

use super::modes::Mode;
use super::stack::{Nginx, Server};
use super::{on_off, start_stack, wrk_run, Ctx, FileSpec};
use crate::cost::{self, CostCell, CostStack, Group, Labels, Load};
use crate::http;

pub use crate::cost::CostModelSetting;

/// nginx's names in the cost model.
pub const LABELS: Labels = Labels {
    app: "nginx",
    app_group: "nginx (master and workers)",
    load: "wrk",
};

/// nginx's cost model (`cost_model` in `--json`).
pub type CostModel = cost::CostModel<NginxCell>;

/// `--cost-model-cells`: which size × keep-alive cells the cost model measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CostModelCells {
    /// One: 16k with keep-alive on when measured, else the first measured size and keep-alive
    /// setting.
    One,
    /// Every measured size × keep-alive cell.
    All,
}

/// One size × keep-alive cell (`size` and `keepalive` of its row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NginxCell {
    /// Size name.
    pub size: String,
    /// Keep-alive on or off.
    pub keepalive: bool,
}

impl CostCell for NginxCell {
    fn label(&self) -> String {
        format!("{} keep-alive {}", self.size, on_off(self.keepalive))
    }

    fn padded(&self) -> String {
        format!("{:>4} keep-alive {:<3}", self.size, on_off(self.keepalive))
    }
}

/// The cells to measure.
fn choose_cells(files: &[FileSpec], keepalive: &[bool], which: CostModelCells) -> Vec<NginxCell> {
    let all: Vec<NginxCell> = files
        .iter()
        .flat_map(|f| {
            keepalive.iter().map(move |&ka| NginxCell {
                size: f.size.clone(),
                keepalive: ka,
            })
        })
        .collect();
    match which {
        CostModelCells::All => all,
        CostModelCells::One => all
            .iter()
            .find(|c| c.size == "16k" && c.keepalive)
            .or_else(|| all.first())
            .cloned()
            .into_iter()
            .collect(),
    }
}

/// A mode's nginx and servers under the cost model (nginx is dropped first).
struct NginxStack<'a> {
    ctx: &'a Ctx,
    nginx: Nginx,
    servers: Vec<Server>,
}

impl NginxStack<'_> {
    fn file(&self, cell: &NginxCell) -> Result<&FileSpec> {
        self.ctx
            .files
            .iter()
            .find(|f| f.size == cell.size)
            .with_context(|| format!("no file of size {}", cell.size))
    }
}

impl CostStack for NginxStack<'_> {
    type Cell = NginxCell;

    fn pids(&self, group: Group) -> Vec<u32> {
        match group {
            Group::App => self.nginx.pids(),
            _ => crate::cost::server_pids(&self.servers, group, LABELS.app),
        }
    }

    fn cpu_s(&self, group: Group) -> f64 {
        match group {
            Group::App => self.nginx.cpu_s(),
            _ => crate::cost::server_cpu_s(&self.servers, group, LABELS.app),
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        self.nginx.check_alive()?;
        for s in self.servers.iter_mut() {
            if !s.alive() {
                bail!("{} exited", s.name);
            }
        }
        Ok(())
    }

    fn prepare(&mut self, cells: &[NginxCell]) -> Result<()> {
        for c in cells {
            let f = self.file(c)?;
            http::verify(self.nginx.addr, &f.url_path, f.bytes, &f.sha256)
                .with_context(|| format!("content check failed for {}", f.size))?;
        }
        if let Some(c) = cells.first() {
            let warmup = self.ctx.cfg.warmup_s.max(1);
            if let Err(e) = wrk_run(self.ctx, &self.nginx, self.file(c)?, c.keepalive, warmup).run()
            {
                tracing::warn!("cost model: warm-up failed: {e:#}");
            }
        }
        Ok(())
    }

    fn load(&mut self, cell: &NginxCell) -> Result<Load> {
        let f = self.file(cell)?;
        let (report, _) = wrk_run(
            self.ctx,
            &self.nginx,
            f,
            cell.keepalive,
            self.ctx.cfg.duration_s,
        )
        .run()?;
        Ok(Load {
            requests: report.requests,
            requests_per_s: report.requests_per_s,
            failure: report.failure(),
        })
    }

    fn stop(self) {
        let _ = self.nginx.stop();
        drop(self.servers);
    }
}

/// Runs the cost-model phase over the modes that ran (`first_index` numbers its stacks'
/// directories after the throughput stacks).
pub(super) fn run(
    ctx: &Ctx,
    modes: &[Mode],
    setting: CostModelSetting,
    which: CostModelCells,
    first_index: usize,
) -> CostModel {
    let cells = choose_cells(&ctx.files, &ctx.cfg.keepalive, which);
    cost::run(
        setting,
        &LABELS,
        modes,
        &cells,
        first_index,
        |mode, index| {
            let (servers, nginx) = start_stack(ctx, mode, index)?;
            Ok(NginxStack {
                ctx,
                nginx,
                servers,
            })
        },
    )
}

/// The cost model's table (after the throughput summary), or the line saying why it did not
/// run.
pub fn print_table(cm: &CostModel) {
    use cost::opt;
    if !cost::print_title(cm) {
        return;
    }
    println!(
        "{:<8} {:<5} {:<10} {:>10} {:>9} {:>11} {:>15} {:>9} {:>18} {:>22}",
        "mode",
        "size",
        "keep-alive",
        "req/s tel.",
        "app sc/r",
        "net srv sc/r",
        "storage srv sc/r",
        "all sc/r",
        "routed/r (st, net)",
        "CPU us/r app/st/net"
    );
    let (storage, net) = (
        Group::Storage.process(LABELS.app),
        Group::Net.process(LABELS.app),
    );
    for r in &cm.rows {
        let sc = |g: Group| opt(r.process(g).and_then(|p| p.syscalls_per_request), 2);
        let cpu = |g: Group| opt(r.process(g).and_then(|p| p.cpu_us_per_request), 1);
        let routed = |d: &str| opt(r.routed_to(d).and_then(|x| x.per_request), 2);
        println!(
            "{:<8} {:<5} {:<10} {:>10} {:>9} {:>11} {:>15} {:>9} {:>18} {:>22}",
            r.mode,
            r.cell.size,
            on_off(r.cell.keepalive),
            opt(r.requests_per_s_telemetry_on, 0),
            sc(Group::App),
            sc(Group::Net),
            sc(Group::Storage),
            opt(r.all_syscalls_per_request, 2),
            format!("{}, {}", routed(storage), routed(net)),
            format!(
                "{} / {} / {}",
                cpu(Group::App),
                cpu(Group::Storage),
                cpu(Group::Net)
            ),
        );
    }
    println!("(sc/r: system calls (kernel entries) per request; routed/r: calls routed to the storage and network domains per request, which never enter the kernel; CPU us/r: CPU µs per request of nginx, the storage server, the network server)");
    cost::print_top_syscalls(cm);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_labels() {
        let f = |s: &str| FileSpec {
            size: s.to_owned(),
            bytes: 1,
            url_path: String::new(),
            sha256: String::new(),
        };
        let files = [f("1k"), f("16k")];
        let one = choose_cells(&files, &[false, true], CostModelCells::One);
        assert_eq!(one.len(), 1);
        assert_eq!((one[0].size.as_str(), one[0].keepalive), ("16k", true));
        let one = choose_cells(&files[..1], &[false], CostModelCells::One);
        assert_eq!((one[0].size.as_str(), one[0].keepalive), ("1k", false));
        assert_eq!(
            choose_cells(&files, &[true, false], CostModelCells::All).len(),
            4
        );
        assert_eq!(one[0].label(), "1k keep-alive off");
        assert_eq!(one[0].padded(), "  1k keep-alive off");

        let mut cm = CostModel::new(CostModelSetting::On, &LABELS);
        cm.status = "ran";
        cm.rows.push(cost::CostRow::failed(
            "net",
            &NginxCell {
                size: "16k".to_owned(),
                keepalive: true,
            },
            "boom".to_owned(),
        ));
        assert!(cm
            .failure()
            .unwrap()
            .contains("net 16k keep-alive on: boom"));
        let v = serde_json::to_value(&cm).unwrap();
        assert_eq!(v["rows"][0]["size"], "16k");
        assert_eq!(v["rows"][0]["keepalive"], true);
        assert!(v["method"][0].as_str().unwrap().contains("one wrk run"));
    }
}
