//! One data line of each trace layout (Azure and BurstGPT CSV rows, Mooncake and dujiang
//! JSON lines) mapped onto a [`TraceRecord`], with the field's place in every error. Split
//! from the reader, whose state (the settled layout, column indices, the line number) it
//! reads.

use super::*;

impl<R: BufRead> TraceReader<R> {
    /// Parses one data line: `Ok(None)` for a request the trace marks as failed.
    /// The arrival is signed because an Azure row may predate the first row.
    pub(super) fn parse_record(
        &mut self,
        line: &str,
    ) -> Result<Option<(i64, TraceRecord)>, TraceError> {
        match &self.layout {
            Layout::Azure { .. } => self.parse_azure(line).map(Some),
            Layout::BurstGpt { .. } => self.parse_burstgpt(line),
            Layout::Mooncake => self.parse_mooncake(line).map(Some),
            Layout::Jsonl => self.parse_jsonl(line).map(Some),
            Layout::Undetected => unreachable!("layout settled before records"),
        }
    }

    /// The text of column `idx` of the current CSV row, with its 1-based byte column.
    pub(super) fn field<'l>(
        &self,
        line: &'l str,
        idx: usize,
        names: &[String],
    ) -> Result<(&'l str, usize), TraceError> {
        match self.fields.get(idx) {
            Some(&(a, b)) => Ok((line[a..b].trim(), a + 1)),
            None => Err(self
                .err(
                    TraceErrorKind::Line,
                    format!(
                        "missing column (row has {} of {} columns)",
                        self.fields.len(),
                        names.len()
                    ),
                )
                .in_field(names[idx].clone())),
        }
    }

    pub(super) fn tokens(&self, text: &str, column: usize, name: &str) -> Result<u32, TraceError> {
        parse_tokens(text).map_err(|msg| {
            self.err(TraceErrorKind::Line, msg)
                .at_column(column)
                .in_field(name)
        })
    }

    pub(super) fn parse_azure(&mut self, line: &str) -> Result<(i64, TraceRecord), TraceError> {
        split_csv(line, &mut self.fields);
        let Layout::Azure {
            names,
            timestamp,
            context,
            generated,
            origin_ns,
        } = &self.layout
        else {
            unreachable!()
        };
        let (ts_text, ts_col) = self.field(line, *timestamp, names)?;
        let (ctx_text, ctx_col) = self.field(line, *context, names)?;
        let (gen_text, gen_col) = self.field(line, *generated, names)?;
        let at = parse_datetime_ns(ts_text).map_err(|msg| {
            self.err(TraceErrorKind::Line, msg)
                .at_column(ts_col)
                .in_field(names[*timestamp].clone())
        })?;
        let prompt_tokens = self.tokens(ctx_text, ctx_col, &names[*context])?;
        let output_tokens = self.tokens(gen_text, gen_col, &names[*generated])?;
        let origin = origin_ns.unwrap_or(at);
        let since = at.checked_sub(origin).ok_or_else(|| {
            self.err(
                TraceErrorKind::Line,
                format!(
                    "timestamp \"{ts_text}\" is more than 292 years from the first row's; \
                     arrivals are kept as i64 nanoseconds"
                ),
            )
            .at_column(ts_col)
            .in_field(names[*timestamp].clone())
        })?;
        let rec = TraceRecord {
            prompt_tokens,
            output_tokens,
            ..TraceRecord::default()
        };
        if let Layout::Azure { origin_ns, .. } = &mut self.layout {
            *origin_ns = Some(origin);
        }
        Ok((since, rec))
    }

    pub(super) fn parse_burstgpt(
        &mut self,
        line: &str,
    ) -> Result<Option<(i64, TraceRecord)>, TraceError> {
        split_csv(line, &mut self.fields);
        let Layout::BurstGpt {
            names,
            timestamp,
            request,
            response,
            model,
            session,
        } = &self.layout
        else {
            unreachable!()
        };
        let (ts_text, ts_col) = self.field(line, *timestamp, names)?;
        let (req_text, req_col) = self.field(line, *request, names)?;
        let (resp_text, resp_col) = self.field(line, *response, names)?;
        let at = parse_decimal_ns(ts_text, NANOS_PER_SEC).map_err(|msg| {
            self.err(TraceErrorKind::Line, msg)
                .at_column(ts_col)
                .in_field(names[*timestamp].clone())
        })?;
        let prompt_tokens = self.tokens(req_text, req_col, &names[*request])?;
        let output_tokens = self.tokens(resp_text, resp_col, &names[*response])?;
        if output_tokens == 0 {
            return Ok(None);
        }
        let model = match model {
            Some(i) => Some(self.field(line, *i, names)?.0)
                .filter(|m| !m.is_empty())
                .map(str::to_string),
            None => None,
        };
        let session = match session {
            Some(i) => session_id(self.field(line, *i, names)?.0),
            None => None,
        };
        let at = i64::try_from(at).map_err(|_| {
            self.err(
                TraceErrorKind::Line,
                format!("time \"{ts_text}\" is too large"),
            )
            .in_field(names[*timestamp].clone())
        })?;
        Ok(Some((
            at,
            TraceRecord {
                prompt_tokens,
                output_tokens,
                model,
                session,
                ..TraceRecord::default()
            },
        )))
    }

    pub(super) fn json_err(&self, line: &str, e: serde_json::Error) -> TraceError {
        let text = e.to_string();
        // serde_json appends " at line L column C"; the line is always 1 here.
        let message = match text.rfind(" at line ") {
            Some(i) => text[..i].to_string(),
            None => text,
        };
        let err = self
            .err(TraceErrorKind::Line, message)
            .at_column(e.column());
        // A key serde names itself (an unknown or a missing one) is the field. Otherwise
        // serde_json does not say which key held a value of the wrong type; in a flat
        // object it is the last key before the error's column.
        let named = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| err.message.strip_prefix(p))
            .and_then(|rest| rest.split_once('`'))
            .map(|(key, _)| key.to_string());
        match (named, e.classify()) {
            (Some(key), _) => err.in_field(key),
            (None, serde_json::error::Category::Data) => match key_before(line, e.column()) {
                Some(key) => err.in_field(key),
                None => err,
            },
            _ => err,
        }
    }

    /// A JSON trace line must be an object: serde would also take an array of the
    /// struct's fields in order, and name the struct in its error.
    pub(super) fn json_object(&self, line: &str) -> Result<(), TraceError> {
        if line.trim_start().starts_with('{') {
            return Ok(());
        }
        Err(self
            .err(
                TraceErrorKind::Line,
                format!(
                    "not a JSON object: each line of a {} trace is one request as {{\"key\": value, ...}}",
                    self.format
                ),
            )
            .at_column(line.len() - line.trim_start().len() + 1))
    }

    pub(super) fn parse_mooncake(&self, line: &str) -> Result<(i64, TraceRecord), TraceError> {
        self.json_object(line)?;
        let row: MooncakeLine = serde_json::from_str(line).map_err(|e| self.json_err(line, e))?;
        let at = ms_to_ns(&row.timestamp)
            .map_err(|msg| self.err(TraceErrorKind::Line, msg).in_field("timestamp"))?;
        Ok((
            at,
            TraceRecord {
                prompt_tokens: row.input_length,
                output_tokens: row.output_length,
                hash_ids: row.hash_ids,
                ..TraceRecord::default()
            },
        ))
    }

    pub(super) fn parse_jsonl(&self, line: &str) -> Result<(i64, TraceRecord), TraceError> {
        self.json_object(line)?;
        let row: JsonlLine = serde_json::from_str(line).map_err(|e| self.json_err(line, e))?;
        let field_err =
            |field: &str, msg: String| self.err(TraceErrorKind::Line, msg).in_field(field);
        let at = match (&row.arrival_ms, row.arrival_ns) {
            (Some(ms), None) => ms_to_ns(ms).map_err(|m| field_err("arrival_ms", m))?,
            (None, Some(ns)) => i64::try_from(ns)
                .map_err(|_| field_err("arrival_ns", format!("{ns} is too large")))?,
            (None, None) => {
                return Err(field_err(
                    "arrival_ms",
                    "missing (give arrival_ms or arrival_ns)".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(field_err(
                    "arrival_ns",
                    "give arrival_ms or arrival_ns, not both".into(),
                ))
            }
        };
        let slo_part = |v: Option<f64>, field: &str| -> Result<Option<Nanos>, TraceError> {
            match v {
                None => Ok(None),
                // A 0 target (or one under half a nanosecond) no request can meet: every
                // request would count as missing its SLO. Refused, as the OpenAI front end
                // refuses `slo.ttft_ms: 0`, rather than read as a typo's nonsense.
                Some(ms) if ms.is_finite() && ms >= 0.0 => match (ms * NANOS_PER_MS as f64).round()
                {
                    ns if ns >= 1.0 => Ok(Some(ns as Nanos)),
                    _ => Err(field_err(
                        field,
                        format!(
                            "{ms} ms: an SLO must be above 0 (leave the key out for the default)"
                        ),
                    )),
                },
                Some(ms) => Err(field_err(field, format!("{ms} is not a duration in ms"))),
            }
        };
        let ttft = slo_part(row.slo_ttft_ms, "slo_ttft_ms")?;
        let tpot = slo_part(row.slo_tpot_ms, "slo_tpot_ms")?;
        let slo = (ttft.is_some() || tpot.is_some()).then(|| {
            let d = Slo::default();
            Slo {
                ttft_ns: ttft.unwrap_or(d.ttft_ns),
                tpot_ns: tpot.unwrap_or(d.tpot_ns),
            }
        });
        Ok((
            at,
            TraceRecord {
                arrival_ns: 0,
                prompt_tokens: row.input_tokens,
                output_tokens: row.output_tokens,
                hash_ids: row.hash_ids,
                priority: row.priority.unwrap_or_default(),
                slo,
                session: row.session,
                model: row.model,
            },
        ))
    }
}
